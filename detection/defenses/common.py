"""Helpers shared by the feature-space baseline detectors (SS, AC, ...).

- :func:`class_groups` splits sample indices by *given* label, vectorised.
- :func:`base_features` trains (or reuses) the base model on the inspected set
  and returns penultimate features of the inspected set and the clean reserve.
- Turning scores into flags lives in :mod:`detection.thresholds`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detection.base_model import BaseModelParams, FittedModel, fit_base_model
from detection.features import predict
from detection.thresholds import ThresholdParams, apply_threshold
from detection.training import resolve_device
from detection.types import (
    DetectionError,
    DetectionInput,
    DetectionResult,
    RunContext,
    class_summaries,
)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


def class_groups(labels: NDArray[np.integer], n_classes: int) -> list[IntArray]:
    """Indices of the samples of each class, ``result[c]`` sorted ascending.

    Parameters
    ----------
    labels : ndarray of int, shape (N,)
        Given labels in ``[0, n_classes)``.
    n_classes : int

    Returns
    -------
    list of ndarray of int64
        ``n_classes`` index arrays (possibly empty) that partition ``range(N)``.
    """
    order = np.argsort(labels, kind="stable").astype(np.int64)
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    return list(np.split(order, np.cumsum(counts)[:-1]))


def class_means(labels: NDArray[np.integer], values: FloatArray, n_classes: int) -> FloatArray:
    """Mean of ``values`` per given label (0 for an empty class)."""
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    sums = np.bincount(labels, values, n_classes)[:n_classes]
    return sums / np.maximum(counts, 1)


def thresholded_result(
    inp: DetectionInput,
    scores: FloatArray,
    params: ThresholdParams,
    reserve_scores: FloatArray | None,
    info: dict[str, Any],
    class_values: FloatArray | None = None,
) -> DetectionResult:
    """Flags by ``params``' threshold, per-class means of ``class_values`` (default: scores)."""
    flags, threshold = apply_threshold(scores, params, reserve_scores)
    labels = np.asarray(inp.labels, dtype=np.int64)
    values = scores if class_values is None else class_values
    means = class_means(labels, values, inp.n_classes)
    return DetectionResult(
        scores=scores,
        flags=flags,
        classes=class_summaries(labels, flags, inp.n_classes, means),
        info={"threshold": threshold, **info},
    )


def require_reserve(inp: DetectionInput, detector: str, why: str = "threshold='clean_fpr'") -> None:
    """Raise :class:`DetectionError` unless ``inp`` carries a clean reserve."""
    if not inp.has_clean_reserve:
        raise DetectionError(f"{detector}: {why} needs a clean reserve (clean_x, clean_labels)")


@dataclass(frozen=True)
class BaseFeatures:
    """Penultimate features of the base model trained on the inspected set.

    Attributes
    ----------
    features : ndarray, float64, shape (N, D)
    labels : ndarray, int64, shape (N,)
        Given labels of the inspected set.
    clean_features : ndarray, float64, shape (R, D), optional
        The clean reserve through the same model.
    clean_labels : ndarray, int64, shape (R,), optional
    accuracy : float
        Base model accuracy on the inspected set w.r.t. the given labels.
    seconds : float
        Time spent fitting (0 when a cached model was reused) and extracting.
    """

    features: FloatArray
    labels: IntArray
    clean_features: FloatArray | None
    clean_labels: IntArray | None
    accuracy: float
    seconds: float


def fitted_base_model(
    inp: DetectionInput, params: BaseModelParams, ctx: RunContext, device: str | None = None
) -> FittedModel:
    """:func:`fit_base_model` through the run's model cache (``ctx.models``).

    Detectors of one job share one base model when the data (by content),
    their ``base_model`` params, the seed and the device agree. The model is
    read-only: a detector that trains takes ``copy.deepcopy(fitted.model)``.
    """
    content = ctx.models.content_key(inp, inp.x, inp.labels, inp.clean_x, inp.clean_labels)
    dev = str(resolve_device(device or ctx.device))
    key = ("base_model", content, params.model_dump_json(), str(ctx.seed), dev)
    return ctx.models.get_or_fit(
        key, lambda: fit_base_model(inp, params, ctx, device), lambda f: f.model
    )


def base_features(
    inp: DetectionInput, params: BaseModelParams, ctx: RunContext, device: str | None = None
) -> BaseFeatures:
    """Fit (or reuse) the base model and extract features of data and reserve."""
    start = time.perf_counter()
    fitted = fitted_base_model(inp, params, ctx, device)
    out = predict(fitted.model, fitted.data, with_features=True)
    assert out.features is not None
    labels = np.asarray(inp.labels, dtype=np.int64)
    clean_f = clean_y = None
    if fitted.clean is not None and inp.clean_labels is not None:
        clean_out = predict(fitted.model, fitted.clean, with_features=True)
        assert clean_out.features is not None
        clean_f = clean_out.features.astype(np.float64)
        clean_y = np.asarray(inp.clean_labels, dtype=np.int64)
    return BaseFeatures(
        features=out.features.astype(np.float64),
        labels=labels,
        clean_features=clean_f,
        clean_labels=clean_y,
        accuracy=float((out.predictions == labels).mean()) if labels.size else 0.0,
        seconds=time.perf_counter() - start,
    )


def robust_outlier_classes(
    statistics: FloatArray, z: float = 3.5, min_mad: float = 0.0
) -> list[int]:
    """Classes whose statistic lies above the median by more than ``z`` robust SDs.

    Uses the modified z-score ``0.6745 (s - median) / max(MAD, min_mad)``;
    classes with a NaN statistic (too few samples) are ignored. ``min_mad``
    keeps a near-constant statistic (MAD ~ 0) from calling tiny excesses outliers.
    """
    valid = np.isfinite(statistics)
    if valid.sum() < 3:
        return []
    med = float(np.median(statistics[valid]))
    mad = max(float(np.median(np.abs(statistics[valid] - med))), min_mad)
    if mad <= 0.0:
        return []
    mz = 0.6745 * (statistics - med) / mad
    return [int(c) for c in np.flatnonzero(valid & (mz > z))]
