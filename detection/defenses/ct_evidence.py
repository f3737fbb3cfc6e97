"""Confusion Training evidence across rounds: checks, dense score and flags.

Each round's confused model says which samples it still fits. The paper uses
only the last model; a short schedule's last model can be noisy, so these
functions keep the evidence of every round:

- :func:`fit_evidence` — each sample's fit percentile under a round's model;
- :func:`round_check` — the inference-only likelihood-ratio check run after
  every round (leading class, its ratio, the suspected poison count), used to
  guard distillation and to tell a collapse;
- :func:`rounds_score` — the dense score from all rounds;
- :func:`canary_flags` — flags calibrated on known-clean canaries at a target
  FPR, restricted to classes with a significant excess.

Reference: X. Qi et al., "Towards A Proactive ML Approach for Detecting
Backdoor Poison Samples", USENIX Security 2023.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from detection.defenses.ct_identify import LikelihoodRatios, likelihood_ratio_test

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

CLASS_ALPHA = 1e-3  # family-wise level of the per-class excess test
FPR_CONFIDENCE = 0.95  # one-sided level of the reported FPR bound


def fit_evidence(losses: FloatArray) -> FloatArray:
    """Fit percentile of every sample under one model: 1 = lowest loss, ~0 = highest.

    Parameters
    ----------
    losses : ndarray, shape (n,)
        Cross-entropy of each sample's given label.
    """
    n = losses.size
    ranks = stats.rankdata(losses, method="average")
    out: FloatArray = 1.0 - (ranks - 1.0) / max(1, n)
    return out


@dataclass(frozen=True)
class RoundCheck:
    """What a round's confused model says without ground truth."""

    leading_class: int
    leading_log_ratio: float
    flagged_classes: list[int]
    suspected_count: int
    isolated_per_class: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "leading_class": self.leading_class,
            "leading_ratio": float(np.exp(self.leading_log_ratio)),
            "flagged_classes": list(self.flagged_classes),
            "suspected_count": self.suspected_count,
        }


CONFIDENT_LOSS = float(np.log(2.0))  # P(given label) > 1/2: fitted despite the confusion


def round_check(
    test: LikelihoodRatios, labels: IntArray, losses: FloatArray, n_classes: int
) -> RoundCheck:
    """Summarise one round's likelihood-ratio test (see :func:`likelihood_ratio_test`).

    The suspected poison count is the larger of the flagged classes' isolated
    samples that the confused model still gives more than even odds (mid-
    schedule models still fit some clean samples, with far less confidence)
    and the leading class's isolated samples in excess of the clean classes'
    rate (only the leading class: a benign, confusion-resistant class flagged
    beside it would inflate the floor with clean samples).
    """
    lead = int(np.argmax(test.log_ratios))
    isolated = np.bincount(labels[test.isolated], minlength=n_classes)[:n_classes]
    sizes = np.bincount(labels, minlength=n_classes)[:n_classes]
    confident = int((test.flags & (losses < CONFIDENT_LOSS)).sum())
    flagged_lead = [lead] if lead in test.flagged_classes else []
    excess = isolated_excess(isolated, sizes, flagged_lead)
    return RoundCheck(
        leading_class=lead,
        leading_log_ratio=float(test.log_ratios[lead]),
        flagged_classes=list(test.flagged_classes),
        suspected_count=max(confident, excess),
        isolated_per_class=[int(v) for v in isolated],
    )


def isolated_excess(isolated: IntArray, sizes: IntArray, flagged: list[int]) -> int:
    """Isolated samples of the flagged classes beyond the clean classes' isolated rate.

    Weak backdoors (WaNet's warps) are fitted by the confused model, yet never
    with more than even odds, so a confidence cut misses them; what gives
    them away is how many more of the flagged class the model still fits
    than of any unflagged class.
    """
    if not flagged:
        return 0
    others = [c for c in range(sizes.size) if c not in flagged and sizes[c] > 0]
    if not others:
        return 0
    clean_rate = float(np.median(isolated[others] / sizes[others]))
    surplus = isolated[flagged] - clean_rate * sizes[flagged]
    return int(np.ceil(np.clip(surplus, 0, None).sum()))


def run_round_check(
    features: FloatArray,
    labels: IntArray,
    preds: IntArray,
    losses: FloatArray,
    n_classes: int,
    thresholds: tuple[float, float, float],
) -> RoundCheck:
    """The per-round check: the paper's test on a round's confused model."""
    threshold, max_class_threshold, eps = thresholds
    test = likelihood_ratio_test(
        features, labels, preds, n_classes, threshold, max_class_threshold, eps
    )
    return round_check(test, labels, losses, n_classes)


def collapsed(previous: RoundCheck | None, current: RoundCheck, log_drop: float) -> bool:
    """Did a flagged class lose its evidence: the leading ratio fell by more than
    ``exp(log_drop)`` and none of the previously flagged classes is flagged now?

    A fall from an unremarkable ratio is noise, and a ratio that falls from
    1e11 to 1e4 while the class stays flagged is a backdoor still in place.
    """
    if previous is None or not previous.flagged_classes:
        return False
    fell = current.leading_log_ratio < previous.leading_log_ratio - log_drop
    kept = set(previous.flagged_classes) & set(current.flagged_classes)
    return fell and not kept


def distill_floor(check: RoundCheck, factor: float | None, current_size: int) -> int:
    """Places the next distilled set must keep: ``factor`` x the suspected poisons."""
    if factor is None or not check.flagged_classes:
        return 0
    return min(current_size, int(np.ceil(factor * check.suspected_count)))


def class_standardised(losses: FloatArray, labels: IntArray) -> FloatArray:
    """How far below its class's typical loss each sample sits, in robust units.

    ``(median_c(log L) - log L_i) / (1.4826 · MAD_c(log L))`` per given class
    ``c``: benign classes resist confusion differently (Fashion-MNIST "coat"
    and "shirt" keep a heavy low-loss tail), so a global percentile puts their
    clean tail above poisons that stand far apart from the clean samples of
    their own class. The median and MAD ignore the poisons, a minority.
    """
    logs = np.log(np.maximum(losses, 1e-8))
    out = np.zeros_like(logs)
    for c in np.unique(labels):
        members = labels == c
        centre = float(np.median(logs[members]))
        spread = 1.4826 * float(np.median(np.abs(logs[members] - centre)))
        out[members] = (centre - logs[members]) / max(spread, 1e-6)
    return out


@dataclass
class Evidence:
    """Per-round views of every sample of the working set: its fit percentile
    (:func:`fit_evidence`) and its class-standardised fit
    (:func:`class_standardised`)."""

    rounds: list[FloatArray] = field(default_factory=list)
    standardised: list[FloatArray] = field(default_factory=list)

    def add(self, losses: FloatArray, labels: IntArray) -> None:
        self.rounds.append(fit_evidence(losses))
        self.standardised.append(class_standardised(losses, labels))


def rounds_score(evidence: Evidence, first: int = 1) -> FloatArray:
    """Dense score in [0, 1]: the mean fit percentile from round ``first`` on.

    Round 0's confusion is the mildest (its model still fits most clean
    samples), so by default it does not vote. Poisons stay fitted through
    every round; a clean sample may survive one round's confusion by chance
    but rarely all of them.
    """
    votes = evidence.rounds[first:] or evidence.rounds
    out: FloatArray = np.mean(np.stack(votes), axis=0)
    return out


def class_view_score(evidence: Evidence, first: int = 1) -> FloatArray:
    """The class-standardised view: the mean of :func:`class_standardised` from round ``first``."""
    votes = evidence.standardised[first:] or evidence.standardised
    out: FloatArray = np.mean(np.stack(votes), axis=0)
    return out


def rank01(values: FloatArray) -> FloatArray:
    """Ranks scaled to (0, 1]: puts views with different units on one scale."""
    out: FloatArray = stats.rankdata(values, method="average") / max(1, values.size)
    return out


@dataclass(frozen=True)
class Calibration:
    """Flags from :func:`canary_flags` and what they rest on."""

    flags: BoolArray
    threshold: float
    classes: list[int]
    info: dict[str, Any]


def canary_flags(
    scores: FloatArray,
    labels: IntArray,
    canaries: IntArray,
    n_classes: int,
    target_fpr: float,
    lr_classes: list[int] | None = None,
) -> Calibration:
    """Flag scores above the canaries' ``1 - target_fpr`` quantile, in suspected classes.

    Parameters
    ----------
    scores : ndarray, shape (n,)
        Dense scores of the working set (higher = more suspicious).
    labels : ndarray of int, shape (n,)
    canaries : ndarray of int
        Indices of known-clean samples that went through the run like any
        other sample: their scores are draws from the clean score law.
    target_fpr : float
    lr_classes : list of int, optional
        Classes the paper's likelihood-ratio test flags.

    A class is suspected when its count above the threshold is improbable
    under the canaries' exceedance rate (one-sided binomial test at
    :data:`CLASS_ALPHA` / C) and either it is the most improbable class or the
    likelihood-ratio evidence (``lr_classes``) names it too. Benign classes
    differ in how well they resist confusion (Fashion-MNIST "shirt" keeps a
    heavy clean tail), so a significant excess alone admits one class, the
    strongest; the likelihood-ratio test alone is misled by such a class
    round after round (blend, target "shirt": it named "coat" in every
    scoring round while the shirts held the excess, p = 1e-20 against 1e-3),
    so the classes it names must show an excess as well, at level
    :data:`CLASS_ALPHA` (they are pre-selected: no correction for the C classes;
    Trojan seed 0, Fashion-MNIST: the target, named in every round, held 19
    poisons and no clean sample above the threshold, p = 8e-4, and was lost at
    1e-4 while the canaries of the heavy-tailed "shirt" set the threshold).
    """
    canary_scores = scores[canaries]
    threshold = float(np.quantile(canary_scores, 1.0 - target_fpr, method="higher"))
    above = scores > threshold
    is_canary = np.zeros(scores.size, dtype=bool)
    is_canary[canaries] = True
    k_canary = int(above[canaries].sum())
    rate = (k_canary + 1) / (canaries.size + 1)
    inspected = ~is_canary
    n_c = np.bincount(labels[inspected], minlength=n_classes)[:n_classes]
    k_c = np.bincount(labels[inspected & above], minlength=n_classes)[:n_classes]
    p_values = stats.binom.sf(k_c - 1, n_c, rate)
    significant = (p_values < CLASS_ALPHA / n_classes) & (k_c > 0)
    # A class the round checks vouch for is one pre-selected hypothesis, not one of C.
    vouched = (p_values < CLASS_ALPHA) & (k_c > 0)
    classes = {c for c in lr_classes or [] if vouched[c]}
    top = int(np.argmin(p_values))
    if significant[top]:
        classes.add(top)
    flags = above & np.isin(labels, sorted(classes))
    info = {
        "threshold": threshold,
        "target_fpr": target_fpr,
        "canaries": int(canaries.size),
        "canaries_above": k_canary,
        "fpr_upper_bound": _fpr_bound(k_canary, int(canaries.size)),
        "class_p_values": [float(p) for p in p_values],
        "excess_class": top if top in classes else None,
        "likelihood_ratio_classes": sorted(lr_classes or []),
    }
    return Calibration(flags, threshold, sorted(classes), info)


def persistent_classes(records: list[dict[str, Any]], from_round: int) -> list[int] | None:
    """Classes the round checks flag in most scoring rounds (``None``: no such round).

    The last model's test alone is noisy (a benign class can pass its
    threshold once); a target is flagged round after round.
    """
    flagged = [
        rec["flagged_classes"]
        for rec in records
        if rec["round"] >= from_round and not rec.get("collapsed") and "flagged_classes" in rec
    ]
    if not flagged:
        return None
    counts = Counter(c for classes in flagged for c in set(classes))
    return sorted(c for c, k in counts.items() if 2 * k > len(flagged))


def _fpr_bound(k: int, n: int) -> float:
    """One-sided Clopper-Pearson upper bound of the clean exceedance rate."""
    if k >= n:
        return 1.0
    return float(stats.beta.ppf(FPR_CONFIDENCE, k + 1, n - k))
