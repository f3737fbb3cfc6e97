"""SCAn (statistical contamination analyzer): the ``scan`` detector.

Tang, Wang, Tang, Zhang, "Demon in the Variant: Statistical Analysis of DNNs
for Robust Backdoor Contamination Detection", USENIX Security 2021.

A representation is modelled as ``r = mu + e``: an identity ``mu ~ N(0, S_u)``
shared by a class and a within-class variation ``e ~ N(0, S_e)``. Both
covariances are fitted by EM on the *clean reserve* (the global model). Then,
per class of the inspected set (plus the reserve's samples of that class), the
samples are split in two by nearest-mean iteration in the ``S_e``-Mahalanobis
metric, and the class statistic is the mean drop in Mahalanobis residual when
the class has two identities instead of one (a log-likelihood ratio). Classes
whose statistic is a robust outlier (anomaly index above ``e``) are targets;
their subgroup holding fewer reserve samples is flagged.

Ours works in the top principal components of the inspected features, whitens
by ``S_e`` once so every Mahalanobis distance is Euclidean (the split is
scikit-learn's 2-means there), uses the posterior identity mean
``S_u (n S_u + S_e)^-1 sum r`` for the one-identity model, and adds a dense
score: ``softplus(anomaly index) * sigmoid(margin / scale)`` with the margin
how much nearer a sample is to the suspect subgroup's mean than to the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from pydantic import Field
from scipy.special import expit
from sklearn.cluster import KMeans

from detection.base_model import BaseModelParams
from detection.defenses.common import (
    BoolArray,
    FloatArray,
    IntArray,
    base_features,
    require_reserve,
)
from detection.registry import DetectorParams, register_detector
from detection.types import (
    DetectionError,
    DetectionInput,
    DetectionResult,
    RunContext,
    class_summaries,
)


class ScanParams(DetectorParams):
    """Params of the ``scan`` detector (always needs a clean reserve; no budget)."""

    n_components: int = Field(
        64, ge=2, le=512, description="Principal components of the features to model."
    )
    em_iters: int = Field(100, ge=1, le=1000, description="EM iterations of the global model.")
    anomaly_threshold: float = Field(
        float(np.e), gt=0.0, description="Anomaly index above which a class is a target (e)."
    )
    n_init: int = Field(4, ge=1, le=50, description="2-means restarts per class.")
    base_model: BaseModelParams = BaseModelParams()

    def requires_clean_reserve(self) -> bool:
        return True


@dataclass(frozen=True)
class GlobalModel:
    """``S_u`` (identity) and ``S_e`` (within-class) covariances fitted on clean data."""

    s_u: FloatArray
    s_e: FloatArray
    n_iters: int


def fit_global_model(
    x: FloatArray, labels: IntArray, n_classes: int, max_iters: int = 100, tol: float = 1e-5
) -> GlobalModel:
    """EM for the two-covariance model on centred clean features ``x`` (R, k)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, labels, x)
    means = sums / np.maximum(counts, 1.0)[:, None]
    s_u, s_e = _covs(means[labels], x - means[labels])
    n_iters = 0
    while n_iters < max_iters:
        n_iters += 1
        ids = posterior_identities(s_u, s_e, sums, counts)
        new_u, new_e = _covs(ids[labels], x - ids[labels])
        shift = np.linalg.norm(new_u - s_u) + np.linalg.norm(new_e - s_e)
        s_u, s_e = new_u, new_e
        if shift < tol:
            break
    return GlobalModel(s_u, s_e, n_iters)


def posterior_identities(
    s_u: FloatArray, s_e: FloatArray, sums: FloatArray, counts: FloatArray
) -> FloatArray:
    """Posterior mean identity of each group, ``S_u (n S_u + S_e)^-1 sum r``, shape (G, k)."""
    out = np.zeros_like(sums)
    for g in np.flatnonzero(counts > 0):
        out[g] = s_u @ np.linalg.pinv(counts[g] * s_u + s_e) @ sums[g]
    return out


def _covs(u: FloatArray, e: FloatArray) -> tuple[FloatArray, FloatArray]:
    return np.atleast_2d(np.cov(u, rowvar=False)), np.atleast_2d(np.cov(e, rowvar=False))


def whitener(s_e: FloatArray, rel_tol: float = 1e-6) -> FloatArray:
    """``W`` (k, r) with ``|x W|^2`` the ``pinv(S_e)``-Mahalanobis norm of ``x``."""
    vals, vecs = np.linalg.eigh(s_e)
    keep = vals > rel_tol * max(float(vals[-1]), 1e-300)
    out: FloatArray = vecs[:, keep] / np.sqrt(vals[keep])
    return out


@dataclass(frozen=True)
class ClassSplit:
    """The two-subgroup split of one class in the whitened space."""

    statistic: float
    means: FloatArray  # (2, r) subgroup means
    assign: IntArray  # subgroup of each member


def split_class(z: FloatArray, identity: FloatArray, n_init: int, seed: int) -> ClassSplit:
    """2-means ``z`` (n, r) and the mean residual drop of two identities over ``identity``."""
    if z.shape[0] < 4:
        return ClassSplit(0.0, np.vstack([identity, identity]), np.zeros(z.shape[0], np.int64))
    km = KMeans(n_clusters=2, n_init=n_init, random_state=seed).fit(z)
    assign = km.labels_.astype(np.int64)
    means = np.vstack([z[assign == g].mean(axis=0) for g in (0, 1)])
    one = np.square(z - identity).sum(axis=1)
    two = np.square(z - means[assign]).sum(axis=1)
    return ClassSplit(float((one - two).mean()), means, assign)


def anomaly_index(statistics: FloatArray) -> FloatArray:
    """One-sided robust z of ``statistics / max``: ``(a - median) / (1.4826 MAD)``."""
    a = statistics / max(float(np.max(statistics)), 1e-12)
    med = float(np.median(a))
    mad = 1.4826 * float(np.median(np.abs(a - med)))
    out: FloatArray = (a - med) / max(mad, 1e-12)
    return out


def _project(
    features: FloatArray, clean: FloatArray, n_components: int
) -> tuple[FloatArray, FloatArray]:
    """Centre on the inspected mean and keep the top principal components of the inspected set."""
    mean = features.mean(axis=0)
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    basis = vt[: min(n_components, vt.shape[0])]
    return (features - mean) @ basis.T, (clean - mean) @ basis.T


@register_detector("scan", ScanParams, "SCAn (Tang et al. 2021)")
def detect(inp: DetectionInput, params: ScanParams, ctx: RunContext) -> DetectionResult:
    """Flag the reserve-poor subgroup of classes whose two-identity split is anomalous.

    Returns
    -------
    DetectionResult
        ``scores`` (N,): ``softplus(anomaly index of the class) * sigmoid(margin)``,
        higher = more suspicious; per-class statistic = anomaly index;
        ``target_classes`` = classes above ``anomaly_threshold``.
    """
    require_reserve(inp, "scan", "SCAn")
    feats = base_features(inp, params.base_model, ctx.sub(0.0, 0.8), params.device)
    assert feats.clean_features is not None and feats.clean_labels is not None
    start = time.perf_counter()
    ctx.report("global model", 0.8)
    x, clean = _project(feats.features, feats.clean_features, _dims(params, feats.clean_labels))
    gm = fit_global_model(clean, feats.clean_labels, inp.n_classes, params.em_iters)
    w = whitener(gm.s_e)
    ys = (feats.labels, feats.clean_labels)
    splits = _split_classes(x, clean, ys, inp.n_classes, gm, w, params, ctx)
    index = anomaly_index(np.array([s.statistic for s in splits]))
    scores, flags = _score(x @ w, clean @ w, ys, splits, index, params)
    targets = [int(c) for c in np.flatnonzero(index > params.anomaly_threshold)]
    return DetectionResult(
        scores=scores,
        flags=flags,
        classes=class_summaries(feats.labels, flags, inp.n_classes, index, set(targets)),
        target_classes=targets,
        info={
            "threshold": {"rule": "anomaly_index", "value": params.anomaly_threshold},
            "em_iters": gm.n_iters,
            "dims": int(w.shape[1]),
            "base_model_accuracy": feats.accuracy,
            "seconds": {"base_model": feats.seconds, "scan": time.perf_counter() - start},
        },
    )


def _dims(params: ScanParams, clean_labels: IntArray) -> int:
    """Components the reserve can support: at most half its within-class degrees of freedom."""
    dof = clean_labels.size - np.unique(clean_labels).size
    if dof < 4:
        raise DetectionError(f"scan: the clean reserve is too small ({clean_labels.size} samples)")
    return min(params.n_components, dof // 2)


def _split_classes(
    x: FloatArray,
    clean: FloatArray,
    ys: tuple[IntArray, IntArray],
    n_classes: int,
    gm: GlobalModel,
    w: FloatArray,
    params: ScanParams,
    ctx: RunContext,
) -> list[ClassSplit]:
    """Split every class of the inspected set plus the reserve's samples of that class."""
    both = np.vstack([x, clean])
    both_y = np.concatenate(ys)
    counts = np.bincount(both_y, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, both.shape[1]))
    np.add.at(sums, both_y, both)
    ids = posterior_identities(gm.s_u, gm.s_e, sums, counts) @ w
    splits = []
    for c in range(n_classes):
        ctx.check_cancel()
        splits.append(split_class(both[both_y == c] @ w, ids[c], params.n_init, ctx.seed))
    return splits


def _score(
    z: FloatArray,
    z_clean: FloatArray,
    ys: tuple[IntArray, IntArray],
    splits: list[ClassSplit],
    index: FloatArray,
    params: ScanParams,
) -> tuple[FloatArray, BoolArray]:
    labels, clean_labels = ys
    scores = np.zeros(z.shape[0])
    flags = np.zeros(z.shape[0], dtype=bool)
    for c, split in enumerate(splits):
        rows = labels == c
        if not rows.any():
            continue
        suspect = _suspect_group(split, z_clean[clean_labels == c])
        margin = _margin(z[rows], split.means, suspect)
        scale = 1.4826 * float(np.median(np.abs(margin - np.median(margin))))
        scores[rows] = np.logaddexp(0.0, index[c]) * expit(margin / max(scale, 1e-12))
        if index[c] > params.anomaly_threshold:
            flags[rows] = margin > 0
    return scores, flags


def _suspect_group(split: ClassSplit, z_clean: FloatArray) -> int:
    """The subgroup holding fewer reserve samples (ties: the smaller subgroup)."""
    near = _margin(z_clean, split.means, 1) > 0 if z_clean.size else np.zeros(0, bool)
    in_one, in_zero = int(near.sum()), int((~near).sum())
    if in_one != in_zero:
        return 1 if in_one < in_zero else 0
    sizes = np.bincount(split.assign, minlength=2)
    return int(np.argmin(sizes))


def _margin(z: FloatArray, means: FloatArray, suspect: int) -> FloatArray:
    """How much nearer each row is to subgroup ``suspect``'s mean than to the other's."""
    d_suspect = np.square(z - means[suspect]).sum(axis=1)
    d_other = np.square(z - means[1 - suspect]).sum(axis=1)
    out: FloatArray = d_other - d_suspect
    return out
