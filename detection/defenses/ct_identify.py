"""Pure, vectorised pieces of Confusion Training (Qi et al., USENIX Security 2023).

Everything here works on NumPy arrays and is unit-testable without a model:

- :func:`confusion_shifts` — the per-iteration label shift of the confusion batch;
- :func:`class_frequencies` — the class-frequency weights ``f_c`` of a round;
- :func:`distill_indices` — the low-loss selection with per-class top-ups;
- :func:`stratified_reserve` — a class-stratified random clean reserve;
- :func:`likelihood_ratio_test` — the final per-class 2-D PCA likelihood-ratio test;
- :func:`ct_scores` — the dense suspicion score.

Reference: X. Qi, T. Xie, J. T. Wang, T. Wu, S. Mahloujifar, P. Mittal,
"Towards A Proactive ML Approach for Detecting Backdoor Poison Samples",
USENIX Security 2023 (arXiv:2205.13616).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from detection.datasets import class_quotas

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

MAX_LOG_LR = 50.0  # keeps LR_c finite and JSON-able (exp(50) ~ 5e21)


def confusion_shifts(n_steps: int, n_classes: int) -> IntArray:
    """Label shift of every confusion iteration, never ``0 mod C``.

    The shift grows by one per iteration and skips multiples of ``C``
    (1, 2, ..., C-1, C+1, ...); modulo ``C`` that is ``(t mod (C-1)) + 1``.

    Returns
    -------
    ndarray of int64, shape (n_steps,)
        Values in ``[1, C)``: confusion label = ``(base prediction + shift) mod C``.
    """
    t = np.arange(n_steps, dtype=np.int64)
    return (t % max(1, n_classes - 1) + 1).astype(np.int64)


def class_frequencies(labels: IntArray, n_classes: int, last_round: bool) -> FloatArray:
    """``f_c = sqrt(count_c / n + 0.001)``; all ones in the last round.

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
        Given labels of the current distilled set.
    """
    if last_round or labels.size == 0:
        return np.ones(n_classes, dtype=np.float64)
    counts = np.bincount(labels, minlength=n_classes)[:n_classes].astype(np.float64)
    return np.sqrt(counts / labels.size + 0.001)


def rank_within_class(values: FloatArray, labels: IntArray, n_classes: int) -> IntArray:
    """Rank (0 = smallest value) of each sample among the samples of its class."""
    order = np.lexsort((values, labels))
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    ranks = np.empty(labels.size, dtype=np.int64)
    ranks[order] = np.arange(labels.size) - np.repeat(starts, counts)
    return ranks


def distill_indices(
    losses: FloatArray,
    labels: IntArray,
    n_classes: int,
    ratio: float,
    topup: float,
    min_keep: int = 0,
) -> IntArray:
    """Keep the ``max(floor(ratio·N), min_keep)`` (at least one) lowest-loss samples
    plus per-class top-ups.

    Each class ``c`` then holds at least ``floor(topup · n_c)`` samples: its
    lowest-loss ones are added when the global cut left it short.

    Parameters
    ----------
    losses : ndarray, shape (N,)
        Per-sample cross-entropy of the confused model w.r.t. the given labels.
    labels : ndarray of int, shape (N,)
    ratio, topup : float
    min_keep : int
        A floor on the global cut (guarded distillation keeps room for every
        suspected poison).

    Returns
    -------
    ndarray of int64
        Sorted indices of the new distilled set.
    """
    n = losses.size
    keep = np.zeros(n, dtype=bool)
    n_keep = min(n, max(1, int(np.floor(ratio * n)), min_keep))  # never train on nothing
    if n_keep > 0:
        keep[np.argsort(losses, kind="stable")[:n_keep]] = True
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    quota = np.floor(topup * counts).astype(np.int64)
    keep |= rank_within_class(losses, labels, n_classes) < quota[labels]
    return np.flatnonzero(keep).astype(np.int64)


def stratified_reserve(
    labels: IntArray,
    losses: FloatArray,
    size: int,
    n_classes: int,
    rng: np.random.Generator,
    band: tuple[float, float] = (0.4, 0.6),
) -> tuple[IntArray, int]:
    """Class-stratified random reserve from a band of each class's loss distribution.

    Each class gets a share of ``size`` proportional to its count, drawn at
    random from its samples whose loss quantile *within the class* lies in
    ``band``. Where poisons sit depends on the model the losses come from:
    after a short probe they are in the tails (the lowest once the trigger is
    learned — the paper's "poisons are learned first" — the highest before
    that), so the central band avoids them; after a model fitted to the whole
    set they are fitted later than most clean samples and sit above the
    median, so a band below it avoids them. A global lowest-loss cut would
    also strip whole "easy" classes of their typical samples. When a band is
    smaller than its class's share, the samples nearest the band fill it.

    Returns
    -------
    (indices, n_outside_band) : (ndarray of int64, int)
        Sorted reserve indices and how many lie outside the band.
    """
    lo, hi = band
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    quantile = (rank_within_class(losses, labels, n_classes) + 0.5) / np.maximum(counts, 1)[labels]
    distance = np.maximum(lo - quantile, quantile - hi).clip(min=0.0)
    in_band = distance == 0.0
    key = np.where(in_band, rng.random(labels.size), 1.0 + distance)
    quota = class_quotas(counts, size)
    chosen = rank_within_class(key, labels, n_classes) < quota[labels]
    return np.flatnonzero(chosen).astype(np.int64), int((chosen & ~in_band).sum())


@dataclass(frozen=True)
class LikelihoodRatios:
    """Result of :func:`likelihood_ratio_test`.

    Attributes
    ----------
    ratios : ndarray, shape (C,)
        ``LR_c`` per class (1 where a group has fewer than 2 members).
    log_ratios : ndarray, shape (C,)
        ``log LR_c`` (clipped to ``±MAX_LOG_LR``).
    sample_llr : ndarray, shape (N,)
        Per-sample log-density under the "isolated" Gaussian minus under the
        "other" Gaussian of its class (0 where the test was not run).
    isolated : ndarray of bool, shape (N,)
        ``prediction == given label``.
    flags : ndarray of bool, shape (N,)
        Isolated samples of the flagged classes.
    flagged_classes : list of int
    """

    ratios: FloatArray
    log_ratios: FloatArray
    sample_llr: FloatArray
    isolated: BoolArray
    flags: BoolArray
    flagged_classes: list[int]


def gaussian_logpdf(x: FloatArray, mean: FloatArray, cov: FloatArray) -> FloatArray:
    """Log-density of rows of ``x`` (n, d) under N(mean, cov)."""
    d = x.shape[1]
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0:
        logdet = float(np.log(np.finfo(np.float64).tiny))
    diff = x - mean
    maha = np.einsum("ij,ij->i", diff @ np.linalg.pinv(cov), diff)
    out: FloatArray = -0.5 * (maha + logdet + d * np.log(2.0 * np.pi))
    return out


def _fit(x: FloatArray, eps: float) -> tuple[FloatArray, FloatArray]:
    cov = np.atleast_2d(np.cov(x.T, bias=False)) + eps * np.eye(x.shape[1])
    return x.mean(axis=0), cov


def pca_2d(features: FloatArray) -> FloatArray:
    """Project rows on their top-2 principal components, shape (n, 2)."""
    centred = features - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj: FloatArray = centred @ vt[:2].T
    if proj.shape[1] < 2:
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
    return proj


def class_log_ratio(proj: FloatArray, isolated: BoolArray, eps: float) -> tuple[float, FloatArray]:
    """``(log LR, per-sample llr)`` of one class's 2-D projected features.

    Single-cluster model: one Gaussian fitted to the non-isolated ("other")
    samples, evaluated on the whole class. Two-cluster model: that Gaussian for
    the other samples and a Gaussian fitted to the isolated ones for them.
    ``log LR = (log L_two - log L_one) / n_c``.
    """
    other = ~isolated
    llr = np.zeros(proj.shape[0], dtype=np.float64)
    if isolated.sum() < 2 or other.sum() < 2:
        return 0.0, llr
    mu_o, cov_o = _fit(proj[other], eps)
    mu_i, cov_i = _fit(proj[isolated], eps)
    llr[isolated] = gaussian_logpdf(proj[isolated], mu_i, cov_i) - gaussian_logpdf(
        proj[isolated], mu_o, cov_o
    )
    log_lr = float(llr.sum() / proj.shape[0])
    return float(np.clip(log_lr, -MAX_LOG_LR, MAX_LOG_LR)), llr


def likelihood_ratio_test(
    features: FloatArray,
    labels: IntArray,
    preds: IntArray,
    n_classes: int,
    threshold: float = 2.0,
    max_class_threshold: float = 1.5,
    eps: float = 1e-3,
) -> LikelihoodRatios:
    """CT's final identification: per-class 2-D PCA likelihood-ratio test.

    Parameters
    ----------
    features : ndarray, shape (N, D)
        Penultimate features of the last confused model.
    labels, preds : ndarray of int, shape (N,)
        Given labels and the confused model's predictions.
    threshold : float
        Flag the isolated samples of every class with ``LR_c > threshold``.
    max_class_threshold : float
        ... and of the class with the largest ``LR_c`` if it exceeds this.
    eps : float
        Added to the diagonal of every fitted covariance.
    """
    isolated = preds == labels
    n = labels.size
    log_lr = np.zeros(n_classes, dtype=np.float64)
    sample_llr = np.zeros(n, dtype=np.float64)
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        if idx.size < 4:
            continue
        proj = pca_2d(np.asarray(features[idx], dtype=np.float64))
        log_lr[c], sample_llr[idx] = class_log_ratio(proj, isolated[idx], eps)
    ratios = np.exp(log_lr)
    flagged = set(np.flatnonzero(ratios > threshold).tolist())
    top = int(np.argmax(ratios))
    if ratios[top] > max_class_threshold:
        flagged.add(top)
    classes = sorted(int(c) for c in flagged)
    flags = isolated & np.isin(labels, classes)
    return LikelihoodRatios(ratios, log_lr, sample_llr, isolated, flags, classes)


def sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


def ct_scores(confidence: FloatArray, labels: IntArray, test: LikelihoodRatios) -> FloatArray:
    """Dense CT score, higher = more suspicious, finite, in ``[0, 4]``.

    ``score_i = 2·flag_i + 0.5·P_i + isolated_i · (s_{y_i} + 0.5·sigmoid(llr_i))``

    where ``P_i = P_{M*}(y_i | x_i)`` is the confused model's confidence in the
    given label, ``s_c = max(log LR_c, 0) / max_c' max(log LR_c', 0)`` in
    ``[0, 1]`` is the class's relative suspicion (0 when no class has LR > 1),
    and ``sigmoid(llr_i)`` is the logistic of the sample's own log-likelihood ratio
    (isolated cluster vs the rest of its class) from the LR test.

    Flagged samples always rank first (the paper's decision); below them the
    isolated samples of the most suspicious class, ordered by how tightly they
    sit in the isolated cluster and by confidence, then everything else by
    confidence. This keeps a useful ranking when the LR rule flags nothing
    (short schedules).
    """
    positive = np.maximum(test.log_ratios, 0.0)
    top = float(positive.max()) if positive.size else 0.0
    suspicion = positive / top if top > 0 else np.zeros_like(positive)
    iso_term = suspicion[labels] + 0.5 * sigmoid(test.sample_llr)
    score = 2.0 * test.flags + 0.5 * confidence + test.isolated * iso_term
    out: FloatArray = np.nan_to_num(score.astype(np.float64), nan=0.0, posinf=4.0, neginf=0.0)
    return out
