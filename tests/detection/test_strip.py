"""STRIP: blend entropy, recall on real data, refusal on feature vectors."""

from __future__ import annotations

import numpy as np
import pytest

from detection.attacks import PoisonedSet
from detection.metrics import evaluate
from detection.registry import run_detector
from detection.types import DetectionError, DetectionInput, RunContext

BASE_MODEL = {"arch": "small_cnn", "epochs": 12}


def test_strip_finds_badnet_on_digits(poisoned_digits: tuple[DetectionInput, PoisonedSet]) -> None:
    inp, ps = poisoned_digits
    raw = {"n_perturb": 16, "threshold": "clean_fpr", "target_fpr": 0.05, "base_model": BASE_MODEL}
    ctx = RunContext(device="cpu")
    result = run_detector("strip", inp, raw, ctx)
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.9 and metrics["fpr"] <= 0.1, metrics
    assert metrics["auroc"] >= 0.97, metrics
    assert result.info["carriers"] == "clean_reserve"
    # Poisons keep predicting the target through the overlay: low entropy, high score.
    assert (result.scores <= 1e-9).all()
    assert np.median(result.scores[ps.poison_indices]) > np.median(result.scores)


def test_strip_without_reserve_uses_the_inspected_set(
    poisoned_digits: tuple[DetectionInput, PoisonedSet],
) -> None:
    inp, _ = poisoned_digits
    bare = DetectionInput(inp.x, inp.labels, inp.n_classes)
    raw = {"n_perturb": 8, "budget": 0.05, "base_model": {"epochs": 1}}
    result = run_detector("strip", bare, raw, RunContext(device="cpu"))
    assert result.info["carriers"] == "inspected_set"
    assert result.info["threshold"]["rule"] == "budget"
    assert result.n_flagged == int(0.05 * inp.n_samples)


def test_strip_refuses_feature_vectors() -> None:
    rng = np.random.default_rng(0)
    inp = DetectionInput(rng.normal(size=(40, 5)), np.arange(40, dtype=np.int64) % 2, 2)
    with pytest.raises(DetectionError, match="needs images"):
        run_detector("strip", inp, {}, RunContext(device="cpu"))
