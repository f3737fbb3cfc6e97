"""Helpers shared by the feature-space baseline detectors (SS, AC, ...).

- :func:`class_groups` splits sample indices by *given* label, vectorised.
- :func:`base_features` trains (or reuses) the base model on the inspected set
  and returns penultimate features of the inspected set and the clean reserve.
- :func:`budget_flags` and :func:`clean_fpr_threshold` turn dense scores into
  flags without ever reading the true poison rate.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from detection.base_model import BaseModelParams, FittedModel, fit_base_model
from detection.features import predict
from detection.types import DetectionError, DetectionInput, RunContext

ThresholdRule = Literal["auto", "budget", "clean_fpr"]
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


def budget_flags(scores: FloatArray, groups: list[IntArray], fraction: float) -> BoolArray:
    """Flag the ``floor(fraction * n_c)`` highest-scoring samples of each class.

    Parameters
    ----------
    scores : ndarray, shape (N,)
        Higher = more suspicious.
    groups : list of index arrays
        Per-class indices, as from :func:`class_groups`.
    fraction : float
        Fraction of each class to flag (clipped to [0, 1]).
    """
    flags = np.zeros(scores.shape[0], dtype=bool)
    fraction = min(max(fraction, 0.0), 1.0)
    for idx in groups:
        k = int(np.floor(fraction * idx.size))
        if k > 0:
            top = np.argpartition(-scores[idx], k - 1)[:k]
            flags[idx[top]] = True
    return flags


def clean_fpr_threshold(reserve_scores: FloatArray, target_fpr: float) -> float:
    """Score threshold that flags at most ``target_fpr`` of the clean reserve.

    Samples with ``score > threshold`` are flagged; the threshold is the
    ``1 - target_fpr`` quantile of the reserve's scores (rounded up to an
    observed value, so the reserve's own FPR never exceeds the target).
    """
    if reserve_scores.size == 0:
        raise DetectionError("the clean reserve is empty; cannot set a clean-FPR threshold")
    q = min(max(1.0 - target_fpr, 0.0), 1.0)
    return float(np.quantile(reserve_scores, q, method="higher"))


def require_reserve(inp: DetectionInput, detector: str) -> None:
    """Raise :class:`DetectionError` unless ``inp`` carries a clean reserve."""
    if not inp.has_clean_reserve:
        raise DetectionError(
            f"{detector}: threshold='clean_fpr' needs a clean reserve (clean_x, clean_labels); "
            "give one or use threshold='budget'"
        )


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


_CacheKey = tuple[str, int, str]
_cache: dict[str, tuple[weakref.ref[DetectionInput], _CacheKey, FittedModel]] = {}


def fitted_base_model(
    inp: DetectionInput, params: BaseModelParams, ctx: RunContext, device: str | None = None
) -> FittedModel:
    """:func:`fit_base_model`, reusing the last model fitted on the same ``inp`` object.

    Detectors run one after another in a job on the same input share one
    base model when their ``base_model`` params, seed and device agree. Only
    the most recent model is kept, and it is dropped when ``inp`` is freed.
    """
    key: _CacheKey = (params.model_dump_json(), ctx.seed, str(device or ctx.device))
    hit = _cache.get("last")
    if hit is not None and hit[0]() is inp and hit[1] == key:
        return hit[2]
    _cache.clear()
    fitted = fit_base_model(inp, params, ctx, device)
    _cache["last"] = (weakref.ref(inp), key, fitted)
    weakref.finalize(inp, _forget_dead)
    return fitted


def _forget_dead() -> None:
    hit = _cache.get("last")
    if hit is not None and hit[0]() is None:
        _cache.clear()


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
