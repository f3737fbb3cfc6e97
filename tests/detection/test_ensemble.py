"""Ensemble: rank fusion over registered detectors, member params, contributions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from detection.attacks import plant
from detection.datasets import split_reserve
from detection.defenses.ensemble import fuse, normalised_ranks
from detection.metrics import evaluate
from detection.readers import LoadedDataset
from detection.registry import parse_detector_params, requires_clean_reserve, run_detector
from detection.types import DetectionError, DetectionInput, RunContext

BASE_MODEL = {"arch": "small_cnn", "epochs": 12}


def test_rank_fusion() -> None:
    ranks = np.vstack([normalised_ranks(np.array([3.0, 1.0, 2.0, 2.0])), [0.25, 1.0, 0.5, 0.75]])
    assert ranks[0].tolist() == [1.0, 0.25, 0.625, 0.625]
    assert fuse(ranks, "mean").tolist() == pytest.approx([0.625, 0.625, 0.5625, 0.6875])
    assert fuse(ranks, "max").tolist() == [1.0, 1.0, 0.625, 0.75]


def test_member_params_are_validated_and_stored_resolved() -> None:
    params = parse_detector_params("ensemble", {"detectors": ["ss", "scan"]})
    stored = params.model_dump()
    assert stored["detector_params"]["ss"]["base_model"]["epochs"] == 12.0
    assert requires_clean_reserve(params)  # scan needs one
    assert not requires_clean_reserve(parse_detector_params("ensemble", {}))
    bad: list[dict[str, Any]] = [
        {"detectors": ["ss", "nope"]},
        {"detectors": ["ensemble"]},
        {"detectors": ["ss"], "detector_params": {"ss": {"budget": 3}}},
        {"detectors": ["ss", "ss"]},
        {"detectors": ["ss"], "detector_params": {"ac": {}}},
        {"detectors": ["ss"], "min_votes": 2},
    ]
    for raw in bad:
        with pytest.raises(ValidationError):
            parse_detector_params("ensemble", raw)


def test_ensemble_fuses_detectors_on_digits(digits: LoadedDataset) -> None:
    torch.set_num_threads(1)
    inspected, reserve = split_reserve(digits.labels, 200, seed=0)
    attack = {"rate": 0.04, "target_class": 0}
    ps = plant("badnet", digits.x[inspected], digits.labels[inspected], 10, attack, seed=0)
    inp = DetectionInput(
        ps.x, ps.labels, 10, clean_x=digits.x[reserve], clean_labels=digits.labels[reserve]
    )
    members = ["ss", "spectre", "scan"]
    raw = {
        "detectors": members,
        "detector_params": {name: {"base_model": BASE_MODEL} for name in members},
    }
    traced: list[str] = []
    ctx = RunContext(device="cpu", trace=lambda event, payload: traced.append(payload["name"]))
    result = run_detector("ensemble", inp, raw, ctx)
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.9 and metrics["fpr"] <= 0.05, metrics
    assert metrics["auroc"] >= 0.98, metrics
    assert result.target_classes == [0]
    info = result.info["members"]
    assert [m["name"] for m in info] == members == traced
    assert sum(m["share"] for m in info) == pytest.approx(1.0)
    assert all(m["agreement"] > 0.3 for m in info)
    assert ctx.models.misses == 1 and ctx.models.hits == 2  # one base model for three members
    # A member that cannot run refuses the whole ensemble clearly.
    bare = DetectionInput(inp.x, inp.labels, inp.n_classes)
    with pytest.raises(DetectionError, match="clean reserve"):
        run_detector("ensemble", bare, raw, RunContext(device="cpu"))
