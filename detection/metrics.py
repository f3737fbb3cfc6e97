"""Evaluation against ground truth (turning scores into flags: :mod:`detection.thresholds`).

Evaluation is kept apart from detection: detectors never see
``poison_indices``; these functions compare their ``scores`` (higher = more
suspicious) and ``flags`` with the planted poisons afterwards.

Conventions for degenerate inputs (every metric is finite, so JSON-safe):

* ``true_positive_rate`` (elimination rate) is 1.0 when there is no poison:
  every one of zero poisons was removed. ``tpr_at_fpr`` likewise.
* ``false_positive_rate`` (sacrifice rate) is 0.0 when there is no clean sample.
* ``auroc`` is 0.5 (chance) when either class is missing.
* ``average_precision`` is 0.0 when there is no poison.

Cover samples (attack samples that keep their true label and trigger, used
by adaptive attacks) count as clean: flagging them is a false positive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def poison_mask(n_samples: int, poison_indices: ArrayLike) -> NDArray[np.bool_]:
    """Boolean mask of length ``n_samples``, True at ``poison_indices``."""
    idx = np.asarray(poison_indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n_samples):
        raise ValueError(f"poison indices must lie in [0, {n_samples})")
    mask = np.zeros(n_samples, dtype=bool)
    mask[idx] = True
    return mask


def true_positive_rate(flags: ArrayLike, poison_mask: ArrayLike) -> float:
    """Fraction of poisons flagged (elimination rate); 1.0 when there is none."""
    f, m = _pair(flags, poison_mask)
    n_pos = int(m.sum())
    return 1.0 if n_pos == 0 else float(f[m].sum()) / n_pos


def false_positive_rate(flags: ArrayLike, poison_mask: ArrayLike) -> float:
    """Fraction of clean samples flagged (sacrifice rate); 0.0 when there is none."""
    f, m = _pair(flags, poison_mask)
    n_neg = int((~m).sum())
    return 0.0 if n_neg == 0 else float(f[~m].sum()) / n_neg


def auroc(scores: ArrayLike, poison_mask: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for separating poisons from clean.

    Rank-based (Mann-Whitney U with average ranks), so ties count one half.
    1.0 = every poison scores above every clean sample; 0.5 if a class is missing.
    """
    s, m = _scored(scores, poison_mask)
    n_pos = int(m.sum())
    n_neg = m.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = _average_ranks(s)
    u = float(ranks[m].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def average_precision(scores: ArrayLike, poison_mask: ArrayLike) -> float:
    """Average precision: sum over distinct thresholds of ``(R_k - R_{k-1}) * P_k``.

    Matches ``sklearn.metrics.average_precision_score``; tied scores form one
    threshold. 0.0 when there is no poison.
    """
    s, m = _scored(scores, poison_mask)
    n_pos = int(m.sum())
    if n_pos == 0:
        return 0.0
    tps, fps = _roc_counts(s, m)
    precision = tps / (tps + fps)
    recall_gain = np.diff(tps, prepend=0.0) / n_pos
    return float(np.sum(recall_gain * precision))


def tpr_at_fpr(scores: ArrayLike, poison_mask: ArrayLike, fpr: float) -> float:
    """Best TPR of a threshold ``scores >= t`` whose FPR is at most ``fpr``."""
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    s, m = _scored(scores, poison_mask)
    n_pos = int(m.sum())
    n_neg = m.size - n_pos
    if n_pos == 0:
        return 1.0
    tps, fps = _roc_counts(s, m)
    ok = fps <= fpr * n_neg + 1e-9
    return float(tps[ok].max()) / n_pos if ok.any() else 0.0


def evaluate(
    scores: ArrayLike,
    flags: ArrayLike,
    poison_indices: ArrayLike,
    cover_indices: ArrayLike | None = None,
) -> dict[str, Any]:
    """All metrics of one detection run.

    Returns
    -------
    dict
        ``n_samples``, ``n_poison``, ``n_cover``, ``n_flagged`` (ints) and
        ``tpr``, ``fpr``, ``auroc``, ``ap``, ``tpr_at_fpr_1``, ``tpr_at_fpr_5``,
        ``cover_fpr`` (floats; covers count as clean, ``cover_fpr`` is the
        fraction of covers flagged, 0.0 without covers).
    """
    s = _as_scores(scores)
    f = np.asarray(flags, dtype=bool)
    mask = poison_mask(s.size, poison_indices)
    covers = poison_mask(s.size, [] if cover_indices is None else cover_indices)
    if (covers & mask).any():
        raise ValueError("an index is both a poison and a cover")
    return {
        "n_samples": int(s.size),
        "n_poison": int(mask.sum()),
        "n_cover": int(covers.sum()),
        "n_flagged": int(f.sum()),
        "tpr": true_positive_rate(f, mask),
        "fpr": false_positive_rate(f, mask),
        "auroc": auroc(s, mask),
        "ap": average_precision(s, mask),
        "tpr_at_fpr_1": tpr_at_fpr(s, mask, 0.01),
        "tpr_at_fpr_5": tpr_at_fpr(s, mask, 0.05),
        "cover_fpr": true_positive_rate(f, covers) if covers.any() else 0.0,
    }


# --------------------------------------------------------------------------- ranks and curves


def rank_by_score(scores: ArrayLike) -> NDArray[np.int64]:
    """Rank of every sample, 1 = most suspicious; ties go to the lower index."""
    s = _as_scores(scores)
    order = np.lexsort((np.arange(s.size), -s))
    ranks = np.empty(s.size, dtype=np.int64)
    ranks[order] = np.arange(1, s.size + 1)
    return ranks


def roc_curve(
    scores: ArrayLike, poison_mask: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1)."""
    s, m = _scored(scores, poison_mask)
    tps, fps = _roc_counts(s, m)
    tpr = np.r_[0.0, tps / max(1, int(m.sum()))]
    fpr = np.r_[0.0, fps / max(1, int((~m).sum()))]
    return fpr, tpr


# --------------------------------------------------------------------------- helpers


def _as_scores(scores: ArrayLike) -> NDArray[np.float64]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s


def _pair(flags: ArrayLike, mask: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    f = np.asarray(flags, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    if f.ndim != 1 or f.shape != m.shape:
        raise ValueError(f"flags {f.shape} and poison mask {m.shape} must be equal 1-D shapes")
    return f, m


def _scored(scores: ArrayLike, mask: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    s = _as_scores(scores)
    m = np.asarray(mask, dtype=bool)
    if m.shape != s.shape:
        raise ValueError(f"scores {s.shape} and poison mask {m.shape} differ in shape")
    return s, m


def _average_ranks(s: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks; tied values share the mean of their ranks."""
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    mean_rank = ends - (counts - 1) / 2.0
    return mean_rank[inverse]


def _roc_counts(
    s: NDArray[np.float64], m: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Cumulative true/false positives at each distinct threshold, high to low."""
    order = np.argsort(-s, kind="stable")
    sorted_s = s[order]
    tp_cum = np.cumsum(m[order]).astype(np.float64)
    last_of_group = np.r_[np.flatnonzero(np.diff(sorted_s)), s.size - 1]
    tps = tp_cum[last_of_group]
    fps = (last_of_group + 1) - tps
    return tps, fps
