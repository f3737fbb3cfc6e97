"""Turning dense scores into flags: the one place for thresholds.

Every rule here is blind to the true poison rate. Three kinds exist:

* a **budget** (the maximum fraction to flag): the ``floor(fraction * n)``
  highest scores, over the whole set or per class, ties to the lower index;
* a **clean-FPR** cut: scores strictly above the ``1 - target_fpr`` quantile
  of the clean reserve's scores (the next higher observed value), so at most
  ``target_fpr`` of the reserve itself would be flagged;
* a detector's own statistical rule (AC's cluster test, CT's likelihood
  ratio...), which lives with the detector.

Detectors that take a budget subclass :class:`BudgetParams`; those that pick
between a budget and a clean-FPR cut subclass :class:`ThresholdParams` and call
:func:`apply_threshold`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field

from detection.registry import DetectorParams
from detection.types import DetectionError

ThresholdRule = Literal["auto", "budget", "clean_fpr"]
BoolArray = NDArray[np.bool_]


class BudgetParams(DetectorParams):
    """A detector that flags at most a ``budget`` fraction of the data."""

    budget: float = Field(
        0.05, gt=0.0, le=0.5, description="Maximum fraction of the dataset to flag."
    )


class ThresholdParams(BudgetParams):
    """A detector that flags by a budget or by a target FPR on the clean reserve."""

    threshold: ThresholdRule = Field(
        "auto",
        description="budget: flag the top budget fraction; clean_fpr: flag scores above the "
        "clean reserve's (1 - target_fpr) quantile; auto: clean_fpr when a clean reserve is "
        "given, else budget.",
    )
    target_fpr: float = Field(0.05, gt=0.0, lt=1.0, description="FPR on the clean reserve.")

    def requires_clean_reserve(self) -> bool:
        return self.threshold == "clean_fpr"

    def rule(self, has_reserve: bool) -> Literal["budget", "clean_fpr"]:
        """The rule in force: ``auto`` resolves by whether a reserve exists."""
        if self.threshold == "auto":
            return "clean_fpr" if has_reserve else "budget"
        return self.threshold


def budget_count(n: int, fraction: float) -> int:
    """How many of ``n`` samples a budget ``fraction`` allows: ``floor(fraction * n)``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"budget must lie in [0, 1], got {fraction}")
    return min(n, math.floor(fraction * n + 1e-9))


def flag_top_fraction(
    scores: ArrayLike, fraction: float, labels: ArrayLike | None = None
) -> BoolArray:
    """Flag the ``floor(fraction * n)`` highest scores; ties go to the lower index.

    Parameters
    ----------
    scores : array, shape (N,)
        Higher = more suspicious.
    fraction : float
        Budget in [0, 1].
    labels : array of int, shape (N,), optional
        When given, the budget applies per class: ``floor(fraction * n_c)``
        of each class ``c``.
    """
    budget_count(0, fraction)  # validates the fraction
    s = _as_scores(scores)
    groups = np.zeros(s.size, np.int64) if labels is None else np.asarray(labels, np.int64)
    if groups.shape != s.shape:
        raise ValueError(f"labels {groups.shape} and scores {s.shape} differ in shape")
    order = np.lexsort((np.arange(s.size), -s, groups))
    sorted_groups = groups[order]
    starts = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank_in_group = np.arange(s.size) - starts
    sizes = np.bincount(groups)[sorted_groups] if s.size else np.zeros(0, np.int64)
    allowed = np.floor(fraction * sizes + 1e-9)
    flags = np.zeros(s.size, dtype=bool)
    flags[order[rank_in_group < allowed]] = True
    return flags


def clean_fpr_cut(clean_scores: ArrayLike, target_fpr: float) -> float:
    """Cut that flags at most ``target_fpr`` of the clean reserve (``score > cut``).

    The ``1 - target_fpr`` quantile of the reserve's scores, rounded up to an
    observed value; ``-inf`` for ``target_fpr >= 1`` (flag everything).
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must lie in [0, 1], got {target_fpr}")
    clean = _as_scores(clean_scores)
    if clean.size == 0:
        raise DetectionError("the clean reserve is empty; cannot set a clean-FPR threshold")
    if target_fpr >= 1.0:
        return -math.inf
    return float(np.quantile(clean, 1.0 - target_fpr, method="higher"))


def flag_above(scores: ArrayLike, cut: float) -> BoolArray:
    """Flag scores strictly above ``cut``."""
    return _as_scores(scores) > cut


def flag_by_clean_fpr(scores: ArrayLike, clean_scores: ArrayLike, target_fpr: float) -> BoolArray:
    """Flag scores above the clean reserve's cut at ``target_fpr`` (:func:`clean_fpr_cut`)."""
    return flag_above(scores, clean_fpr_cut(clean_scores, target_fpr))


def apply_threshold(
    scores: ArrayLike,
    params: ThresholdParams,
    clean_scores: ArrayLike | None,
    labels: ArrayLike | None = None,
    fraction: float | None = None,
) -> tuple[BoolArray, dict[str, Any]]:
    """Flags by ``params``' rule and a JSON-able description of the threshold used.

    Parameters
    ----------
    scores : array, shape (N,)
    params : ThresholdParams
    clean_scores : array, shape (R,), optional
        The clean reserve scored the same way; required by ``clean_fpr``.
    labels : array, shape (N,), optional
        Apply a budget per class instead of over the whole set.
    fraction : float, optional
        The budget fraction; default ``params.budget``.
    """
    rule = params.rule(clean_scores is not None)
    if rule == "budget":
        frac = params.budget if fraction is None else min(fraction, 1.0)
        info: dict[str, Any] = {"rule": "budget", "fraction": frac}
        if labels is not None:
            info = {"rule": "budget", "fraction_per_class": frac}
        return flag_top_fraction(scores, frac, labels), info
    if clean_scores is None:
        raise DetectionError("threshold='clean_fpr' needs a clean reserve")
    cut = clean_fpr_cut(clean_scores, params.target_fpr)
    return flag_above(scores, cut), {
        "rule": "clean_fpr",
        "target_fpr": params.target_fpr,
        "score": cut,
    }


def _as_scores(scores: ArrayLike) -> NDArray[np.float64]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s
