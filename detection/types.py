"""Core data contracts shared by every detector, attack and caller.

Glossary: ``n_samples`` (N), ``n_classes`` (C), ``labels`` (given labels,
int64, shape ``(N,)``), ``scores`` (float64, shape ``(N,)``, higher = more
suspicious), ``flags`` (bool, shape ``(N,)``), ``poison_indices`` (ground truth,
used only for evaluation), ``clean_reserve`` (a small trusted set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detection.cache import ModelCache

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]
TraceFn = Callable[[str, dict[str, Any]], None]


class DetectionError(ValueError):
    """Input that a detector cannot work with (bad shapes, too few samples...)."""


class JobCancelled(Exception):
    """Raised by :meth:`RunContext.check_cancel` when the caller asked to stop."""


def _noop_progress(stage: str, fraction: float) -> None:
    del stage, fraction


def _never_cancel() -> bool:
    return False


def _no_trace(event: str, payload: dict[str, Any]) -> None:
    del event, payload


@dataclass(frozen=True)
class DetectionInput:
    """A dataset to inspect.

    Parameters
    ----------
    x : ndarray
        Images as uint8 ``(N, H, W, C)`` or features as float ``(N, D)``.
    labels : ndarray
        Given (possibly poisoned) integer labels, shape ``(N,)``.
    n_classes : int
        Number of classes C; every label lies in ``[0, C)``.
    clean_x, clean_labels : ndarray, optional
        Trusted clean reserve with the same layout as ``x``.
    poison_indices : ndarray, optional
        Ground truth, for evaluation only. Detectors must never read it.
    """

    x: NDArray[Any]
    labels: NDArray[np.int64]
    n_classes: int
    clean_x: NDArray[Any] | None = None
    clean_labels: NDArray[np.int64] | None = None
    poison_indices: NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        _check_xy(self.x, self.labels, self.n_classes, "x")
        if (self.clean_x is None) != (self.clean_labels is None):
            raise DetectionError("clean_x and clean_labels must be given together")
        if self.clean_x is not None and self.clean_labels is not None:
            _check_xy(self.clean_x, self.clean_labels, self.n_classes, "clean_x")
            if self.clean_x.shape[1:] != self.x.shape[1:]:
                raise DetectionError(
                    f"clean reserve shape {self.clean_x.shape[1:]} differs from "
                    f"dataset shape {self.x.shape[1:]}"
                )

    @property
    def n_samples(self) -> int:
        return int(self.x.shape[0])

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    @property
    def has_clean_reserve(self) -> bool:
        return self.clean_x is not None


def _check_xy(x: NDArray[Any], labels: NDArray[Any], n_classes: int, name: str) -> None:
    if x.ndim == 4:
        if x.dtype != np.uint8:
            raise DetectionError(f"{name}: images must be uint8 NHWC, got {x.dtype}")
    elif x.ndim == 2:
        if not np.issubdtype(x.dtype, np.floating):
            raise DetectionError(f"{name}: features must be float N×D, got {x.dtype}")
        if not np.isfinite(x).all():
            raise DetectionError(f"{name}: features contain NaN or inf")
    else:
        raise DetectionError(f"{name}: expected N×H×W×C images or N×D features, got {x.shape}")
    if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
        raise DetectionError(f"{name}: labels shape {labels.shape} does not match {x.shape[0]}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DetectionError(f"{name}: labels must be integers, got {labels.dtype}")
    if n_classes < 2:
        raise DetectionError("n_classes must be at least 2")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DetectionError(f"{name}: labels must lie in [0, {n_classes})")


@dataclass(frozen=True)
class ClassSummary:
    """Per-class statistics of one detection run (by given label)."""

    label: int
    n_samples: int
    n_flagged: int
    statistic: float | None = None
    suspected: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "n_samples": self.n_samples,
            "n_flagged": self.n_flagged,
            "statistic": self.statistic,
            "suspected": self.suspected,
        }


@dataclass
class DetectionResult:
    """What every detector returns.

    Attributes
    ----------
    scores : ndarray, float64, shape (N,)
        Dense suspicion score; higher = more suspicious; always finite.
    flags : ndarray, bool, shape (N,)
        The detector's own decision.
    classes : list of ClassSummary
    target_classes : list of int
        Classes the detector suspects to be backdoor targets.
    info : dict
        JSON-able summary (per-round sizes, thresholds, notes...).
    """

    scores: NDArray[np.float64]
    flags: NDArray[np.bool_]
    classes: list[ClassSummary] = field(default_factory=list)
    target_classes: list[int] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.flags = np.asarray(self.flags, dtype=bool)
        if self.scores.ndim != 1 or self.flags.shape != self.scores.shape:
            raise DetectionError("scores and flags must be 1-D arrays of equal length")
        if not np.isfinite(self.scores).all():
            raise DetectionError("scores must be finite")

    @property
    def n_flagged(self) -> int:
        return int(self.flags.sum())

    def summary(self) -> dict[str, Any]:
        """JSON-able summary for storage and the API."""
        return {
            "n_samples": int(self.scores.shape[0]),
            "n_flagged": self.n_flagged,
            "target_classes": [int(c) for c in self.target_classes],
            "classes": [c.to_dict() for c in self.classes],
            **self.info,
        }


def class_summaries(
    labels: NDArray[np.int64],
    flags: NDArray[np.bool_],
    n_classes: int,
    statistics: NDArray[np.float64] | None = None,
    suspected: set[int] | None = None,
) -> list[ClassSummary]:
    """Build one :class:`ClassSummary` per class from flags and optional statistics."""
    counts = np.bincount(labels, minlength=n_classes)
    flagged = np.bincount(labels[flags], minlength=n_classes)
    suspected = suspected or set()
    return [
        ClassSummary(
            label=c,
            n_samples=int(counts[c]),
            n_flagged=int(flagged[c]),
            statistic=None if statistics is None else float(statistics[c]),
            suspected=c in suspected,
        )
        for c in range(n_classes)
    ]


@dataclass
class RunContext:
    """Everything a detector needs from its caller besides data and params.

    ``progress(stage, fraction)`` reports the current stage and overall
    progress in [0, 1]; ``should_cancel()`` is polled between stages and every
    few hundred training steps; ``scratch_dir`` holds checkpoints.
    ``trace(event, payload)`` receives a detector's internal evidence (e.g. CT's
    per-round distilled set) for benchmarks and debugging; the payload may hold
    arrays and is never needed for the result.
    ``models`` is the run's :class:`~detection.cache.ModelCache`: detectors of
    one job share base models through it (read-only; copy before training).
    Sub-contexts from :meth:`sub` share it.
    """

    device: str = "auto"
    seed: int = 0
    progress: ProgressFn = _noop_progress
    should_cancel: CancelFn = _never_cancel
    scratch_dir: Path | None = None
    trace: TraceFn = _no_trace
    models: ModelCache = field(default_factory=ModelCache)

    def report(self, stage: str, fraction: float) -> None:
        self.progress(stage, float(min(max(fraction, 0.0), 1.0)))

    def check_cancel(self) -> None:
        if self.should_cancel():
            raise JobCancelled("cancelled by request")

    def sub(self, start: float, end: float, prefix: str = "") -> RunContext:
        """A context whose progress maps [0, 1] onto [start, end] of this one."""

        def progress(stage: str, fraction: float) -> None:
            label = f"{prefix}{stage}" if prefix else stage
            self.report(label, start + (end - start) * fraction)

        return replace(self, progress=progress)
