"""SCAn: the two-covariance EM, the split statistic, and recall on real data."""

from __future__ import annotations

import numpy as np
import pytest

from detection.attacks import PoisonedSet
from detection.defenses.scan import anomaly_index, fit_global_model, split_class, whitener
from detection.metrics import evaluate
from detection.registry import parse_detector_params, requires_clean_reserve, run_detector
from detection.types import DetectionError, DetectionInput, RunContext

BASE_MODEL = {"arch": "small_cnn", "epochs": 12}


def test_global_model_recovers_identity_and_within_class_covariances() -> None:
    rng = np.random.default_rng(0)
    n_classes, per_class, dim = 200, 10, 3
    identities = rng.normal(0.0, 3.0, (n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    x = identities[labels] + rng.normal(0.0, 1.0, (labels.size, dim))
    gm = fit_global_model(x - x.mean(axis=0), labels, n_classes)
    assert np.allclose(np.diag(gm.s_e), 1.0, atol=0.15)
    assert np.allclose(np.diag(gm.s_u), 9.0, rtol=0.25)


def test_split_statistic_is_large_only_for_two_identities() -> None:
    rng = np.random.default_rng(1)
    one = rng.normal(size=(300, 8))
    two = one.copy()
    two[:60, 0] += 9.0
    w = whitener(np.eye(8))
    flat = split_class(one @ w, one.mean(axis=0), n_init=2, seed=0)
    split = split_class(two @ w, two.mean(axis=0), n_init=2, seed=0)
    assert split.statistic > 5 * flat.statistic
    small = int(np.argmin(np.bincount(split.assign)))
    assert set(np.flatnonzero(split.assign == small).tolist()) == set(range(60))
    assert anomaly_index(np.array([1.0, 1.1, 0.9, 1.0, 5.0]))[-1] > np.e


def test_scan_finds_badnet_on_digits(poisoned_digits: tuple[DetectionInput, PoisonedSet]) -> None:
    inp, ps = poisoned_digits
    result = run_detector("scan", inp, {"base_model": BASE_MODEL}, RunContext(device="cpu"))
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.9 and metrics["fpr"] <= 0.02, metrics
    assert metrics["auroc"] >= 0.97, metrics
    assert result.target_classes == [0]
    assert result.classes[0].statistic is not None and result.classes[0].statistic > np.e


def test_scan_refuses_without_a_reserve(
    poisoned_digits: tuple[DetectionInput, PoisonedSet],
) -> None:
    inp, _ = poisoned_digits
    assert requires_clean_reserve(parse_detector_params("scan", {}))
    bare = DetectionInput(inp.x, inp.labels, inp.n_classes)
    with pytest.raises(DetectionError, match="clean reserve"):
        run_detector("scan", bare, {}, RunContext(device="cpu"))
