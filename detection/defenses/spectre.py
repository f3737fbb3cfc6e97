"""SPECTRE: the ``spectre`` detector.

Hayase, Kong, Somani, Oh, "SPECTRE: Defending Against Backdoor Attacks Using
Robust Statistics", ICML 2021.

Per class (by given label), the penultimate features are projected on their
top ``k`` principal components, whitened with a *robust* estimate of the clean
covariance, and scored with the quantum entropy (QUE) score
``tau_i = z_i^T U z_i`` where ``U = M / tr(M)`` and
``M = expm(alpha (S' - I) / (||S'||_2 - 1))`` is a *matrix* exponential of the
whitened covariance ``S'`` of the whole class. Whitening by the clean
covariance turns the poison direction into the one direction with excess
variance, and ``M`` weighs it exponentially. ``k`` runs over
``{1, 4, 9, ..., 64}``; the chosen ``k`` is the one whose low-score selection
leaves the largest QUE-weighted excess variance ``tr(S' M) / tr(M)`` in the
64-dimensional space (the removal that took the poisons out).

Ours estimates the robust covariance by concentration steps (as in FastMCD:
start from the half of the class nearest the coordinate-wise median, then
repeatedly keep the half with the smallest Mahalanobis distance) followed by
one reweighting step, which needs no guess of the poison rate; the selection
for the choice of ``k`` drops the scores above a robust upper fence instead
of ``1.5 eps n``. The QUE score of clean samples has mean ~1 in every class,
so the dense score is comparable across classes; the class with the largest
quality, when a robust outlier among classes, is reported as the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from pydantic import Field
from scipy.linalg import expm
from scipy.stats import chi2

from detection.base_model import BaseModelParams
from detection.defenses.common import (
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
from detection.types import DetectionInput, DetectionResult, RunContext, class_summaries

# Classes whose quality sits this many robust SDs above the median are targets.
MIN_QUALITY_MAD = 0.05


class SpectreParams(ThresholdParams):
    """Params of the ``spectre`` detector."""

    alpha: float = Field(4.0, gt=0.0, le=32.0, description="QUE exponent (the paper: 4).")
    max_dims: int = Field(64, ge=1, le=256, description="PCA dimensions of the widest k.")
    n_dims: int = Field(8, ge=1, le=16, description="How many k in {1, 4, ..., max_dims}.")
    samples_per_dim: int = Field(
        10, ge=2, le=1000, description="k is at most n_c / samples_per_dim (a stable covariance)."
    )
    c_steps: int = Field(10, ge=1, le=100, description="Concentration steps of the robust fit.")
    fence_z: float = Field(
        3.0, gt=0.0, description="Selection for choosing k: drop QUE scores above median + z MAD."
    )
    outlier_z: float = Field(3.5, gt=0.0, description="Robust z of a target class's quality.")
    base_model: BaseModelParams = BaseModelParams()


def dims_grid(max_dims: int, n_dims: int) -> list[int]:
    """``round(linspace(1, sqrt(max_dims), n_dims) ** 2)``, deduplicated: 1, 4, 9, ... 64."""
    grid = np.round(np.linspace(1.0, np.sqrt(max_dims), n_dims) ** 2).astype(int)
    return sorted(set(grid.tolist()))


def robust_mean_cov(z: FloatArray, c_steps: int = 10) -> tuple[FloatArray, FloatArray]:
    """Mean and covariance of the clean majority of ``z`` (n, k), robust to < 50% outliers.

    Concentration steps from the half nearest the coordinate-wise median keep
    the half with the smallest Mahalanobis distance; a reweighting step then
    keeps every sample within the 97.5% chi-square ellipsoid (consistency
    corrected), so the estimate is not limited to half the data.
    """
    n, k = z.shape
    h = max(k + 1, (n + k + 1) // 2)
    med = np.median(z, axis=0)
    mad = np.maximum(np.median(np.abs(z - med), axis=0), 1e-12)
    keep = np.argsort(np.square((z - med) / mad).sum(axis=1))[:h]
    for _ in range(c_steps):
        mean, cov = _mean_cov(z[keep])
        new_keep = np.sort(np.argsort(mahalanobis_sq(z, mean, cov))[:h])
        if np.array_equal(new_keep, np.sort(keep)):
            break
        keep = new_keep
    mean, cov = _mean_cov(z[keep])
    d2 = mahalanobis_sq(z, mean, cov)
    d2 *= chi2.ppf(0.5, k) / max(float(np.median(d2)), 1e-12)
    inliers = d2 <= chi2.ppf(0.975, k)
    return _mean_cov(z[inliers]) if inliers.sum() > k else (mean, cov)


def _mean_cov(z: FloatArray) -> tuple[FloatArray, FloatArray]:
    mean = z.mean(axis=0)
    c = z - mean
    cov = c.T @ c / max(1, z.shape[0])
    cov += np.eye(z.shape[1]) * (1e-6 * max(float(np.trace(cov)) / z.shape[1], 1e-12))
    return mean, cov


def mahalanobis_sq(z: FloatArray, mean: FloatArray, cov: FloatArray) -> FloatArray:
    """Squared Mahalanobis distance of each row of ``z``, shape (n,)."""
    white = whiten(z, mean, cov)
    out: FloatArray = np.square(white).sum(axis=1)
    return out


def whiten(z: FloatArray, mean: FloatArray, cov: FloatArray) -> FloatArray:
    """``cov^{-1/2} (z - mean)`` row-wise, via the symmetric eigendecomposition."""
    vals, vecs = np.linalg.eigh(cov)
    inv_sqrt = (vecs / np.sqrt(np.maximum(vals, 1e-12))) @ vecs.T
    out: FloatArray = (z - mean) @ inv_sqrt
    return out


def que_matrix(white: FloatArray, alpha: float) -> FloatArray:
    """``U = M / tr(M)``, ``M = expm(alpha (S' - I) / (||S'||_2 - 1))`` with ``S' = cov(white)``.

    When ``S'`` has no excess variance (``||S'||_2 <= 1``) every direction
    weighs the same: ``U = I / k``.
    """
    k = white.shape[1]
    centred = white - white.mean(axis=0)
    s_prime = centred.T @ centred / max(1, white.shape[0])
    top = float(np.linalg.eigvalsh(s_prime)[-1])
    if top - 1.0 <= 1e-6:
        flat: FloatArray = np.eye(k) / k
        return flat
    m = expm(alpha * (s_prime - np.eye(k)) / (top - 1.0))
    out: FloatArray = m / np.trace(m)
    return out


def que_scores(white: FloatArray, u: FloatArray) -> FloatArray:
    """``tau_i = z_i^T U z_i``, shape (n,); mean ~1 on whitened clean samples."""
    out: FloatArray = np.einsum("nd,de,ne->n", white, u, white)
    return out


@dataclass(frozen=True)
class ClassSpectre:
    """The chosen transform of one class: score any features ``f`` with :meth:`score`."""

    mean: FloatArray  # (D,) class mean for the PCA
    basis: FloatArray  # (k, D) top-k principal axes
    robust_mean: FloatArray  # (k,)
    robust_cov: FloatArray  # (k, k)
    u: FloatArray  # (k, k) normalised QUE matrix
    k: int
    quality: float

    def score(self, features: FloatArray) -> FloatArray:
        z = (features - self.mean) @ self.basis.T
        return que_scores(whiten(z, self.robust_mean, self.robust_cov), self.u)


def fit_class(features: FloatArray, params: SpectreParams) -> ClassSpectre | None:
    """Choose ``k`` and fit the robust whitening + QUE matrix of one class (n_c, D)."""
    n = features.shape[0]
    mean = features.mean(axis=0)
    _, sing, vt = np.linalg.svd(features - mean, full_matrices=False)
    rank = int((sing > sing[0] * 1e-9).sum()) if sing.size and sing[0] > 0 else 0
    width = min(params.max_dims, rank, n // params.samples_per_dim)
    if width < 1:
        return None
    wide = (features - mean) @ vt[:width].T
    best: ClassSpectre | None = None
    for k in [k for k in dims_grid(params.max_dims, params.n_dims) if k <= width]:
        fit = _fit_k(mean, vt[:k], wide[:, :k], params)
        selected = _below_fence(fit.score(features), params.fence_z)
        quality = _quality(wide, selected, params.alpha)
        if best is None or quality > best.quality:
            best = ClassSpectre(mean, vt[:k], fit.robust_mean, fit.robust_cov, fit.u, k, quality)
    return best


def _fit_k(
    mean: FloatArray, basis: FloatArray, z: FloatArray, params: SpectreParams
) -> ClassSpectre:
    r_mean, r_cov = robust_mean_cov(z, params.c_steps)
    u = que_matrix(whiten(z, r_mean, r_cov), params.alpha)
    return ClassSpectre(mean, basis, r_mean, r_cov, u, basis.shape[0], 0.0)


def _below_fence(scores: FloatArray, z: float) -> BoolArray:
    med = float(np.median(scores))
    mad = 1.4826 * float(np.median(np.abs(scores - med)))
    out: BoolArray = scores <= med + z * max(mad, 1e-12)
    return out


def _quality(wide: FloatArray, selected: BoolArray, alpha: float) -> float:
    """QUE-weighted excess variance ``tr(S' M) / tr(M)`` of the class whitened by ``selected``."""
    if selected.sum() <= wide.shape[1]:
        return -np.inf
    mean, cov = _mean_cov(wide[selected])
    white = whiten(wide, mean, cov)
    centred = white - white.mean(axis=0)
    s_prime = centred.T @ centred / white.shape[0]
    return float(np.trace(s_prime @ que_matrix(white, alpha)))


@register_detector("spectre", SpectreParams, "SPECTRE (Hayase et al. 2021)")
def detect(inp: DetectionInput, params: SpectreParams, ctx: RunContext) -> DetectionResult:
    """Score every sample by its QUE score in its class's robustly whitened PCA space.

    Returns
    -------
    DetectionResult
        ``scores`` (N,): QUE score, ~1 for clean samples, higher = more
        suspicious; ``flags`` by the budget (top ``budget`` of the set) or the
        clean-reserve quantile; per-class statistic = quality of the chosen
        ``k``; ``target_classes`` = the class of largest quality if a robust
        outlier among classes.
    """
    if params.threshold == "clean_fpr":
        require_reserve(inp, "spectre")
    feats = base_features(inp, params.base_model, ctx.sub(0.0, 0.8), params.device)
    start = time.perf_counter()
    scores = np.zeros(inp.n_samples)
    fits: list[ClassSpectre | None] = []
    for c, idx in enumerate(class_groups(feats.labels, inp.n_classes)):
        ctx.check_cancel()
        ctx.report("spectre", 0.8 + 0.2 * c / inp.n_classes)
        fit = fit_class(feats.features[idx], params) if idx.size else None
        fits.append(fit)
        if fit is not None:
            scores[idx] = fit.score(feats.features[idx])
    reserve = _reserve_scores(fits, feats.clean_features, feats.clean_labels)
    flags, threshold = apply_threshold(scores, params, reserve)
    quality = np.array([f.quality if f is not None else np.nan for f in fits])
    best = int(np.nanargmax(quality)) if np.isfinite(quality).any() else 0
    outliers = robust_outlier_classes(quality, params.outlier_z, MIN_QUALITY_MAD)
    targets = [best] if best in outliers else []
    return DetectionResult(
        scores=scores,
        flags=flags,
        classes=class_summaries(
            feats.labels, flags, inp.n_classes, np.nan_to_num(quality), set(targets)
        ),
        target_classes=targets,
        info={
            "threshold": threshold,
            "dims": [f.k if f is not None else None for f in fits],
            "base_model_accuracy": feats.accuracy,
            "seconds": {"base_model": feats.seconds, "score": time.perf_counter() - start},
        },
    )


def _reserve_scores(
    fits: list[ClassSpectre | None], clean_f: FloatArray | None, clean_y: IntArray | None
) -> FloatArray | None:
    if clean_f is None or clean_y is None:
        return None
    out = np.zeros(clean_f.shape[0])
    for c, fit in enumerate(fits):
        rows = clean_y == c
        if fit is not None and rows.any():
            out[rows] = fit.score(clean_f[rows])
    return out
