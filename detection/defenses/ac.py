"""Activation Clustering: the ``ac`` detector.

Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy, Srivastava,
"Detecting Backdoor Attacks on Deep Neural Networks by Activation Clustering",
AAAI SafeAI workshop 2019 (arXiv 1811.03728, 2018).

Per class (by given label), the penultimate features are centred, reduced to
a few principal components and split by 2-means. In a poisoned target class
the poisons form their own, smaller, well separated cluster; the smaller
cluster is flagged when it holds less than ``max_cluster_fraction`` of the
class and the split's silhouette exceeds ``min_silhouette``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from pydantic import Field
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from detection.base_model import BaseModelParams
from detection.defenses.common import BoolArray, FloatArray, IntArray, base_features, class_groups
from detection.registry import DetectorParams, register_detector
from detection.types import DetectionInput, DetectionResult, RunContext, class_summaries

MIN_CLASS_SIZE = 4


class ActivationClusteringParams(DetectorParams):
    """Params of the ``ac`` detector (its flags use its own rule, not ``budget``)."""

    n_components: int = Field(10, ge=1, le=256, description="PCA dimensions per class.")
    max_cluster_fraction: float = Field(
        0.35, gt=0.0, lt=0.5, description="A smaller cluster above this class share is benign."
    )
    min_silhouette: float = Field(
        0.10, ge=-1.0, le=1.0, description="A split with lower silhouette is benign."
    )
    silhouette_samples: int = Field(
        2000, ge=10, description="Subsample size for the silhouette of big classes."
    )
    n_init: int = Field(10, ge=1, le=100, description="k-means restarts.")
    base_model: BaseModelParams = BaseModelParams()


@dataclass(frozen=True)
class ClassClusters:
    """The 2-means split of one class in its PCA space.

    Attributes
    ----------
    mean : ndarray, shape (D,)
    basis : ndarray, shape (k, D)
        Principal axes (rows) of the centred class features.
    centres : ndarray, shape (2, k)
        Row 0 is the larger cluster's centre, row 1 the smaller's.
    spread : float
        RMS distance of the larger cluster's members to its centre.
    small_fraction : float
        Share of the class in the smaller cluster.
    silhouette : float
    suspect : bool
        Whether the smaller cluster is flagged by the size + silhouette rule.
    """

    mean: FloatArray
    basis: FloatArray
    centres: FloatArray
    spread: float
    small_fraction: float
    silhouette: float
    suspect: bool


def cluster_class(
    features: FloatArray,
    n_components: int = 10,
    max_cluster_fraction: float = 0.35,
    min_silhouette: float = 0.10,
    silhouette_samples: int = 2000,
    n_init: int = 10,
    seed: int = 0,
) -> ClassClusters | None:
    """Centre, project on ``n_components`` principal axes and 2-means one class.

    Parameters
    ----------
    features : ndarray, shape (n_c, D)

    Returns
    -------
    ClassClusters, or None when the class is too small or all-identical.
    """
    n = features.shape[0]
    if n < MIN_CLASS_SIZE:
        return None
    mean = features.mean(axis=0)
    _, sing, vt = np.linalg.svd(features - mean, full_matrices=False)
    k = int(min(n_components, int((sing > sing[0] * 1e-9).sum()) if sing[0] > 0 else 0))
    if k == 0:
        return None
    z = (features - mean) @ vt[:k].T
    km = KMeans(n_clusters=2, n_init=n_init, random_state=seed).fit(z)
    assign = _nearest(z, km.cluster_centers_)
    counts = np.bincount(assign, minlength=2)
    if counts.min() == 0:
        return None
    order = np.argsort(-counts, kind="stable")
    centres = km.cluster_centers_[order]
    large = assign == order[0]
    sample = None if n <= silhouette_samples else silhouette_samples
    sil = float(silhouette_score(z, assign, sample_size=sample, random_state=seed))
    spread = float(np.sqrt(np.square(z[large] - centres[0]).sum(axis=1).mean()))
    small_fraction = float(counts.min() / n)
    suspect = small_fraction < max_cluster_fraction and sil > min_silhouette
    return ClassClusters(
        mean, vt[:k], centres, spread if spread > 0 else 1.0, small_fraction, sil, suspect
    )


def _nearest(z: FloatArray, centres: FloatArray) -> IntArray:
    d = np.square(z[:, None, :] - centres[None, :, :]).sum(axis=2)
    out: IntArray = d.argmin(axis=1).astype(np.int64)
    return out


def cluster_scores(fit: ClassClusters, features: FloatArray) -> tuple[FloatArray, BoolArray]:
    """Score samples of one class against its split.

    Parameters
    ----------
    fit : ClassClusters
    features : ndarray, shape (n, D)

    Returns
    -------
    scores : ndarray, shape (n,)
        ``r / (1 + r)`` with ``r`` the distance to the larger cluster's centre
        in units of its spread, negated for members of the larger cluster, so
        smaller-cluster members lie in [0, 1) and rank above the rest
        (-1, 0]; plus 1 when the smaller cluster is suspect and the sample is
        in it, so flagged samples rank first (in [1, 2)).
    flags : ndarray of bool, shape (n,)
        Members of a suspect smaller cluster.
    """
    z = (features - fit.mean) @ fit.basis.T
    in_small = _nearest(z, fit.centres) == 1
    r = np.sqrt(np.square(z - fit.centres[0]).sum(axis=1)) / fit.spread
    squashed = r / (1.0 + r)
    flags = in_small & fit.suspect
    scores: FloatArray = np.where(in_small, squashed, -squashed) + flags
    return scores, flags


def activation_clustering(
    features: FloatArray,
    labels: IntArray,
    n_classes: int,
    params: ActivationClusteringParams | None = None,
    seed: int = 0,
) -> tuple[FloatArray, BoolArray, list[ClassClusters | None]]:
    """Run AC on every class: dense scores (N,), flags (N,) and the per-class splits."""
    p = params or ActivationClusteringParams()
    scores = np.zeros(features.shape[0])
    flags = np.zeros(features.shape[0], dtype=bool)
    fits: list[ClassClusters | None] = []
    for idx in class_groups(labels, n_classes):
        fit = cluster_class(
            features[idx],
            p.n_components,
            p.max_cluster_fraction,
            p.min_silhouette,
            p.silhouette_samples,
            p.n_init,
            seed,
        )
        fits.append(fit)
        if fit is not None:
            scores[idx], flags[idx] = cluster_scores(fit, features[idx])
    return scores, flags, fits


@register_detector("ac", ActivationClusteringParams, "Activation Clustering (Chen et al. 2018)")
def detect(
    inp: DetectionInput, params: ActivationClusteringParams, ctx: RunContext
) -> DetectionResult:
    """Flag the smaller 2-means cluster of classes whose split is small and clean-cut.

    Returns
    -------
    DetectionResult
        ``scores`` (N,), higher = more suspicious, flagged samples in [1, 2);
        per-class statistic = silhouette of the split; ``target_classes`` =
        classes with a flagged cluster.
    """
    feats = base_features(inp, params.base_model, ctx.sub(0.0, 0.9), params.device)
    ctx.check_cancel()
    ctx.report("cluster", 0.9)
    start = time.perf_counter()
    scores, flags, fits = activation_clustering(
        feats.features, feats.labels, inp.n_classes, params, ctx.seed
    )
    targets = [c for c, f in enumerate(fits) if f is not None and f.suspect]
    silhouettes = np.array([f.silhouette if f else 0.0 for f in fits])
    ctx.report("cluster", 1.0)
    return DetectionResult(
        scores=scores,
        flags=flags,
        classes=class_summaries(feats.labels, flags, inp.n_classes, silhouettes, set(targets)),
        target_classes=targets,
        info={
            "threshold": {
                "rule": "clusters",
                "max_cluster_fraction": params.max_cluster_fraction,
                "min_silhouette": params.min_silhouette,
            },
            "small_cluster_fraction": [f.small_fraction if f else None for f in fits],
            "base_model_accuracy": feats.accuracy,
            "seconds": {"base_model": feats.seconds, "cluster": time.perf_counter() - start},
        },
    )
