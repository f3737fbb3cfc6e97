"""ABL isolation: the flooding loss through the shared loop, recall on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detection.attacks import plant
from detection.datasets import split_reserve
from detection.metrics import evaluate
from detection.readers import LoadedDataset
from detection.registry import parse_detector_params, requires_clean_reserve, run_detector
from detection.types import DetectionInput, RunContext


def test_abl_isolates_badnet_on_digits(digits: LoadedDataset) -> None:
    torch.set_num_threads(1)
    inspected, _ = split_reserve(digits.labels, 200, seed=0)
    attack = {"rate": 0.04, "target_class": 0}
    ps = plant("badnet", digits.x[inspected], digits.labels[inspected], 10, attack, seed=0)
    inp = DetectionInput(ps.x, ps.labels, 10)
    raw = {"budget": 0.04, "isolation": {"epochs": 15}}
    result = run_detector("abl", inp, raw, RunContext(device="cpu"))
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.85 and metrics["fpr"] <= 0.02, metrics
    assert metrics["auroc"] >= 0.97, metrics
    assert result.n_flagged == int(0.04 * inp.n_samples)
    assert result.target_classes == [0]
    assert result.info["final_batch_loss"] == pytest.approx(0.5, abs=0.3)  # held near gamma
    assert (result.scores <= 0).all() and np.isfinite(result.scores).all()


def test_abl_needs_no_reserve_and_has_a_budget() -> None:
    params = parse_detector_params("abl", {"budget": 0.1, "gamma": 0.3})
    assert not requires_clean_reserve(params)
    with pytest.raises(ValueError, match="budget"):
        parse_detector_params("abl", {"budget": 0.9})
