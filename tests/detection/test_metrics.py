"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from detection.metrics import (
    auroc,
    average_precision,
    evaluate,
    false_positive_rate,
    poison_mask,
    tpr_at_fpr,
    true_positive_rate,
)
from detection.thresholds import flag_above, flag_by_clean_fpr, flag_top_fraction

# (scores, poison mask, hand-computed AUROC, hand-computed AP)
HAND_CASES = [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75, (1.0 + 2 / 3) / 2),
    ([1, 1, 0, 0], [1, 0, 1, 0], 0.5, 0.5),  # ties across classes count one half
    ([3, 3, 2, 1], [1, 1, 0, 1], 2 / 3, 2 / 3 * 1.0 + 1 / 3 * 0.75),
    ([2, 2, 1], [1, 0, 0], 0.75, 0.5),
    ([5, 4, 3], [1, 1, 0], 1.0, 1.0),
    ([3, 4, 5], [1, 1, 0], 0.0, (0.5 + 2 / 3) / 2),
]


def test_poison_mask() -> None:
    assert poison_mask(5, [3, 0, 3]).tolist() == [True, False, False, True, False]
    assert not poison_mask(3, []).any()
    with pytest.raises(ValueError, match="must lie in"):
        poison_mask(3, [3])


def test_rates() -> None:
    mask = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    flags = np.array([1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    assert true_positive_rate(flags, mask) == pytest.approx(2 / 3)
    assert false_positive_rate(flags, mask) == pytest.approx(1 / 5)
    assert true_positive_rate(flags, np.zeros(8, bool)) == 1.0
    assert false_positive_rate(flags, np.ones(8, bool)) == 0.0
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        true_positive_rate(flags, mask[:4])


@pytest.mark.parametrize(("scores", "mask", "want_auc", "want_ap"), HAND_CASES)
def test_auroc_and_ap_by_hand(
    scores: list[float], mask: list[int], want_auc: float, want_ap: float
) -> None:
    assert auroc(scores, np.array(mask, bool)) == pytest.approx(want_auc)
    assert average_precision(scores, np.array(mask, bool)) == pytest.approx(want_ap)


def test_degenerate_classes_are_finite() -> None:
    assert auroc([1.0, 2.0], [False, False]) == 0.5
    assert auroc([1.0, 2.0], [True, True]) == 0.5
    assert average_precision([1.0, 2.0], [False, False]) == 0.0
    assert average_precision([1.0, 2.0], [True, True]) == 1.0
    assert tpr_at_fpr([1.0, 2.0], [False, False], 0.01) == 1.0
    with pytest.raises(ValueError, match="finite"):
        auroc([1.0, np.nan], [True, False])


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random(500) < 0.1
    scores = rng.integers(0, 12, size=500) + 3 * mask  # coarse scores: many ties
    assert auroc(scores, mask) == pytest.approx(roc_auc_score(mask, scores))
    assert average_precision(scores, mask) == pytest.approx(average_precision_score(mask, scores))


def test_tpr_at_fpr() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    mask = np.array([1, 0, 1, 0, 1], bool)
    assert tpr_at_fpr(scores, mask, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(scores, mask, 0.49) == pytest.approx(1 / 3)
    assert tpr_at_fpr(scores, mask, 0.5) == pytest.approx(2 / 3)
    assert tpr_at_fpr(scores, mask, 1.0) == 1.0
    # A tie between the top poison and a clean sample: no threshold reaches FPR 0.
    assert tpr_at_fpr([1, 1, 0], np.array([1, 0, 0], bool), 0.0) == 0.0


def test_evaluate_counts_covers_as_clean() -> None:
    scores = np.array([9.0, 8.0, 7.0, 1.0, 2.0, 3.0, 0.0, 0.5])
    flags = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    out = evaluate(scores, flags, poison_indices=[0, 1, 2], cover_indices=[3, 4])
    assert out["n_samples"] == 8 and out["n_poison"] == 3 and out["n_cover"] == 2
    assert out["n_flagged"] == 3
    assert out["tpr"] == pytest.approx(2 / 3)
    assert out["fpr"] == pytest.approx(1 / 5)
    assert out["cover_fpr"] == pytest.approx(1 / 2)
    assert out["auroc"] == 1.0 and out["ap"] == 1.0
    assert out["tpr_at_fpr_1"] == 1.0 and out["tpr_at_fpr_5"] == 1.0
    keys = {"tpr", "fpr", "auroc", "ap", "tpr_at_fpr_1", "tpr_at_fpr_5"}
    assert keys <= set(out)
    with pytest.raises(ValueError, match="both a poison and a cover"):
        evaluate(scores, flags, [0], [0])


def test_flag_top_fraction() -> None:
    assert flag_top_fraction([1, 3, 3, 2], 0.5).tolist() == [False, True, True, False]
    # A budget is a maximum: floor(0.3 * 4) = 1, and ties go to the lower index.
    assert flag_top_fraction([1, 3, 3, 2], 0.3).tolist() == [False, True, False, False]
    assert flag_top_fraction([5, 5, 5, 1], 0.25).tolist() == [True, False, False, False]
    assert flag_top_fraction(np.arange(10.0), 0.3).sum() == 3  # 0.3 * 10 is not 4
    assert flag_top_fraction([1, 2], 0.0).sum() == 0
    assert flag_top_fraction([1, 2], 1.0).all()
    with pytest.raises(ValueError, match="budget"):
        flag_top_fraction([1, 2], 1.5)
    # Per class: floor(0.5 * 3) = 1 of class 0, floor(0.5 * 2) = 1 of class 1.
    per_class = flag_top_fraction([4, 9, 1, 7, 8], 0.5, labels=[0, 1, 0, 1, 0])
    assert per_class.tolist() == [False, True, False, False, True]


def test_flag_by_clean_fpr() -> None:
    clean = np.arange(100.0)
    assert flag_by_clean_fpr([94, 95, 96, 200], clean, 0.05).tolist() == [
        False,
        False,
        True,
        True,
    ]
    rng = np.random.default_rng(0)
    reserve = rng.normal(size=1000)
    for target in (0.0, 0.01, 0.05, 0.2):
        assert flag_by_clean_fpr(reserve, reserve, target).mean() <= target
    assert flag_by_clean_fpr([0.0], reserve, 1.0).all()


def test_flag_above() -> None:
    assert flag_above([0.1, 0.5, 0.9], 0.5).tolist() == [False, False, True]
