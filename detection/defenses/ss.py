"""Spectral Signatures: the ``ss`` detector.

Tran, Li, Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018.

Per class (by given label), a backdoor leaves a direction in the penultimate
features along which the poisons sit apart from the clean samples; it is the
top right-singular vector ``v`` of the centred class feature matrix. Tran et
al. score sample ``i`` of class ``c`` by ``p_i**2`` with ``p_i = <f_i - mu_c, v_c>``.

Ours centres and scales ``p`` robustly per class instead,
``((p_i - median_c p) / (1.4826 MAD_c p))**2``: within a class the ranking is
the same whenever poisons are a minority, but the mean sits between the clean
and poison modes, so the raw score of a class's clean samples grows with its
poison share; the robust z keeps clean samples of every class on one scale,
which the dense score and the clean-reserve threshold need. Median and MAD
are re-estimated without the samples beyond 3 robust SDs, so a large poison
mode does not drag them off the clean majority.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from detection.base_model import BaseModelParams
from detection.defenses.common import (
    BaseFeatures,
    BoolArray,
    FloatArray,
    IntArray,
    base_features,
    class_groups,
    require_reserve,
    robust_outlier_classes,
)
from detection.registry import register_detector
from detection.thresholds import ThresholdParams, apply_threshold
from detection.types import (
    DetectionInput,
    DetectionResult,
    RunContext,
    class_summaries,
)

# A tail share must exceed the class median by ~1.5 points to mark a target class.
MIN_TAIL_MAD = 0.003
# Location/scale of the projections are re-estimated without samples beyond TRIM_Z.
TRIM_Z = 3.0
TRIM_ITERS = 3


class SpectralParams(ThresholdParams):
    """Params of the ``ss`` detector (``budget``: flag ``removal_factor * budget`` per class)."""

    removal_factor: float = Field(
        1.5, gt=0.0, le=10.0, description="Per class, flag removal_factor * budget * n_c."
    )
    tail_z: float = Field(
        4.0, gt=0.0, description="Robust z along the top direction that makes a tail sample."
    )
    outlier_z: float = Field(
        3.5, gt=0.0, description="Modified z-score of a class's tail share marking a target."
    )
    base_model: BaseModelParams = BaseModelParams()


@dataclass(frozen=True)
class SpectralFit:
    """Per-class statistics of the inspected features.

    Attributes
    ----------
    means : ndarray, shape (C, D)
        Class means.
    directions : ndarray, shape (C, D)
        Unit top right-singular vector of each centred class matrix.
    centres : ndarray, shape (C,)
        Trimmed median projection of each class on its direction.
    scales : ndarray, shape (C,)
        Robust spread (1.4826 MAD) of those projections, positive.
    variance_share : ndarray, shape (C,)
        Share of the class variance along ``directions`` (``s_1**2 / sum s_k**2``);
        NaN for classes with fewer than two samples.
    """

    means: FloatArray
    directions: FloatArray
    centres: FloatArray
    scales: FloatArray
    variance_share: FloatArray


def spectral_fit(features: FloatArray, labels: IntArray, n_classes: int) -> SpectralFit:
    """Fit class means, top singular directions and score scales.

    Parameters
    ----------
    features : ndarray, shape (N, D)
    labels : ndarray of int, shape (N,)
        Given labels in ``[0, n_classes)``.
    n_classes : int
    """
    dim = features.shape[1]
    means = np.zeros((n_classes, dim))
    directions = np.zeros((n_classes, dim))
    share = np.full(n_classes, np.nan)
    for c, idx in enumerate(class_groups(labels, n_classes)):
        if idx.size == 0:
            continue
        means[c] = features[idx].mean(axis=0)
        if idx.size < 2:
            continue
        _, sing, vt = np.linalg.svd(features[idx] - means[c], full_matrices=False)
        directions[c] = vt[0]
        energy = float(np.square(sing).sum())
        share[c] = float(sing[0] ** 2) / energy if energy > 0 else 0.0
    proj = projections(means, directions, features, labels)
    centres, scales = _robust_location_scale(proj, labels, n_classes)
    return SpectralFit(means, directions, centres, scales, share)


def _robust_location_scale(
    proj: FloatArray, labels: IntArray, n_classes: int
) -> tuple[FloatArray, FloatArray]:
    centres = np.zeros(n_classes)
    scales = np.ones(n_classes)
    for c, idx in enumerate(class_groups(labels, n_classes)):
        if idx.size:
            centres[c], scales[c] = trimmed_median_mad(proj[idx])
    return centres, scales


def trimmed_median_mad(
    values: FloatArray, trim_z: float = TRIM_Z, n_iter: int = TRIM_ITERS
) -> tuple[float, float]:
    """Median and scaled MAD of ``values``, re-estimated without ``|z| > trim_z``.

    With a poison mode on one side, the plain median drifts towards it;
    re-estimating on the samples within ``trim_z`` pulls the centre and scale
    back to the clean majority. On a unimodal class it changes almost nothing.
    """
    keep = np.ones(values.shape[0], dtype=bool)
    centre, scale = 0.0, 1.0
    for _ in range(n_iter):
        centre = float(np.median(values[keep]))
        dev = np.abs(values[keep] - centre)
        mad = 1.4826 * float(np.median(dev))
        std = float(values[keep].std())
        scale = mad if mad > 1e-12 else (std if std > 1e-12 else 1.0)
        new_keep = np.abs(values - centre) <= trim_z * scale
        if new_keep.sum() < max(2, values.shape[0] // 2) or (new_keep == keep).all():
            break
        keep = new_keep
    return centre, scale


def projections(
    means: FloatArray, directions: FloatArray, features: FloatArray, labels: IntArray
) -> FloatArray:
    """Tran et al.'s projection ``<f_i - mu_y, v_y>``, shape (N,)."""
    out: FloatArray = np.einsum("nd,nd->n", features - means[labels], directions[labels])
    return out


def spectral_scores(fit: SpectralFit, features: FloatArray, labels: IntArray) -> FloatArray:
    """Squared robust z-score of the projection on the class's top direction, shape (N,).

    ``((<f - mu_y, v_y> - m_y) / s_y)**2`` with ``m_y`` the class median and
    ``s_y`` the scaled MAD of the projections. Higher = more suspicious. Works
    for any features scored against ``fit`` (the inspected set or a reserve).
    """
    proj = projections(fit.means, fit.directions, features, labels)
    out: FloatArray = np.square((proj - fit.centres[labels]) / fit.scales[labels])
    return out


def tail_shares(
    scores: FloatArray, labels: IntArray, n_classes: int, tail_z: float = 4.0
) -> FloatArray:
    """Per class, the fraction of samples with ``|robust z| > tail_z``, shape (C,).

    A poisoned class holds a separated mode along its top direction, so a
    large share of it sits far in the tail; a clean class holds few such samples.
    """
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    tails = np.bincount(labels[scores > tail_z**2], minlength=n_classes)[:n_classes]
    out: FloatArray = tails / np.maximum(counts, 1)
    return out


def strongest_class(shares: FloatArray, outlier_z: float = 3.5) -> list[int]:
    """``[argmax]`` of the per-class tail shares if it is a robust outlier, else ``[]``.

    Only the strongest class is reported: heavy-tailed clean classes can be
    outliers too, while an all-to-one backdoor has exactly one target.
    """
    best = int(np.argmax(shares))
    return [best] if best in robust_outlier_classes(shares, outlier_z, MIN_TAIL_MAD) else []


def _flag(
    scores: FloatArray, fit: SpectralFit, feats: BaseFeatures, params: SpectralParams
) -> tuple[BoolArray, dict[str, Any]]:
    """Flags by the per-class budget rule or the clean-reserve quantile, and the rule used."""
    reserve = None
    clean_f, clean_y = feats.clean_features, feats.clean_labels
    if params.rule(clean_f is not None) == "clean_fpr" and clean_f is not None:
        assert clean_y is not None
        reserve = spectral_scores(fit, clean_f, clean_y)
    fraction = params.removal_factor * params.budget
    return apply_threshold(scores, params, reserve, feats.labels, fraction)


@register_detector("ss", SpectralParams, "Spectral Signatures (Tran et al. 2018)")
def detect(inp: DetectionInput, params: SpectralParams, ctx: RunContext) -> DetectionResult:
    """Score every sample by its squared projection on its class's top singular direction.

    Returns
    -------
    DetectionResult
        ``scores`` (N,): squared robust z along the class's top direction,
        higher = more suspicious; ``flags`` from the chosen threshold rule;
        per-class statistic = tail share (fraction of the class beyond
        ``tail_z``); ``target_classes`` = the class with the largest tail
        share when that share is a robust outlier among classes.
    """
    if params.threshold == "clean_fpr":
        require_reserve(inp, "ss")
    feats = base_features(inp, params.base_model, ctx.sub(0.0, 0.9), params.device)
    ctx.check_cancel()
    ctx.report("score", 0.9)
    start = time.perf_counter()
    fit = spectral_fit(feats.features, feats.labels, inp.n_classes)
    scores = spectral_scores(fit, feats.features, feats.labels)
    flags, threshold = _flag(scores, fit, feats, params)
    shares = tail_shares(scores, feats.labels, inp.n_classes, params.tail_z)
    targets = strongest_class(shares, params.outlier_z)
    ctx.report("score", 1.0)
    return DetectionResult(
        scores=scores,
        flags=flags,
        classes=class_summaries(feats.labels, flags, inp.n_classes, shares, set(targets)),
        target_classes=targets,
        info={
            "threshold": threshold,
            "variance_share": np.nan_to_num(fit.variance_share).tolist(),
            "base_model_accuracy": feats.accuracy,
            "seconds": {"base_model": feats.seconds, "score": time.perf_counter() - start},
        },
    )
