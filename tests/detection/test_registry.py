"""Contract tests parametrised over every registered detector."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from detection.base_model import BaseModelParams
from detection.registry import (
    DETECTORS,
    DetectorParams,
    UnknownNameError,
    parse_detector_params,
    requires_clean_reserve,
    run_detector,
)
from detection.thresholds import BudgetParams
from detection.types import DetectionInput, DetectionResult, RunContext

NAMES = DETECTORS.names()
N_CLASSES = 3
N_SAMPLES = 60

# Settings that make a detector finish on the tiny input in about a second.
# A detector whose defaults are slow on 60 samples adds its entry here.
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "ct": {"pretrain_epochs": [0.5] * 6, "confusion_iters": [4] * 6, "base_epochs": 0.5},
}
TINY_BASE_MODEL = {"epochs": 1, "batch_size": 16}
TINY_OVERRIDES["frequency"] = {"steps": 4, "batch_size": 16}
TINY_OVERRIDES["ensemble"] = {
    "detector_params": {name: {"base_model": TINY_BASE_MODEL} for name in ("ss", "ac", "spectre")}
}


def tiny_params(name: str) -> dict[str, Any]:
    """Tiny training budgets: any ``BaseModelParams`` field plus the overrides above."""
    fields = DETECTORS.get(name).params_model.model_fields
    raw: dict[str, Any] = {
        key: TINY_BASE_MODEL for key, f in fields.items() if f.annotation is BaseModelParams
    }
    return {**raw, **TINY_OVERRIDES.get(name, {})}


@pytest.fixture(scope="module")
def tiny_input() -> DetectionInput:
    """60 random 16x16 RGB images in 3 classes plus a 30-image clean reserve."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (N_SAMPLES + 30, 16, 16, 3), dtype=np.uint8)
    labels = np.tile(np.arange(N_CLASSES, dtype=np.int64), (N_SAMPLES + 30) // N_CLASSES)
    x[labels == 1, :4] //= 2  # a weak class signal so training has something to learn
    return DetectionInput(
        x[:N_SAMPLES],
        labels[:N_SAMPLES],
        N_CLASSES,
        clean_x=x[N_SAMPLES:],
        clean_labels=labels[N_SAMPLES:],
    )


def test_builtin_detectors_are_registered() -> None:
    assert {"ss", "ac"} <= set(NAMES)
    with pytest.raises(UnknownNameError, match="known: "):
        DETECTORS.get("no-such-detector")


@pytest.mark.parametrize("name", NAMES)
def test_params_model_contract(name: str) -> None:
    entry = DETECTORS.get(name)
    assert issubclass(entry.params_model, DetectorParams)
    assert entry.description
    params = entry.parse({})
    assert isinstance(params, DetectorParams)
    with pytest.raises(ValidationError):
        params.device = "cpu"  # type: ignore[misc]
    with pytest.raises(ValidationError, match=r"not_a_field|extra"):
        entry.parse({"not_a_field": 1})
    schema = entry.params_schema()
    assert schema["type"] == "object" and "device" in schema["properties"]
    # ``budget`` exists exactly where the detector flags by a budget.
    assert ("budget" in schema["properties"]) is isinstance(params, BudgetParams)
    if isinstance(params, BudgetParams):
        with pytest.raises(ValidationError):
            entry.parse({"budget": 2.0})
    json.dumps(schema)
    assert entry.parse(params.model_dump()) == params


@pytest.mark.parametrize(("threshold", "needs"), [("clean_fpr", True), ("auto", False)])
def test_a_clean_fpr_threshold_requires_a_reserve(threshold: str, needs: bool) -> None:
    params = parse_detector_params("ss", {"threshold": threshold})
    assert requires_clean_reserve(params) is needs
    assert requires_clean_reserve(parse_detector_params("ac", {})) is False


@pytest.mark.parametrize("name", NAMES)
def test_detect_on_tiny_input(name: str, tiny_input: DetectionInput) -> None:
    torch.set_num_threads(2)
    result = run_detector(name, tiny_input, tiny_params(name), RunContext(device="cpu"))
    assert isinstance(result, DetectionResult)
    assert result.scores.shape == (N_SAMPLES,) and result.scores.dtype == np.float64
    assert np.isfinite(result.scores).all()
    assert result.flags.shape == (N_SAMPLES,) and result.flags.dtype == np.bool_
    assert [c.label for c in result.classes] == list(range(N_CLASSES))
    assert sum(c.n_flagged for c in result.classes) == result.n_flagged
    assert all(0 <= c < N_CLASSES for c in result.target_classes)
    json.dumps(result.summary())


@pytest.mark.parametrize("name", NAMES)
def test_duplicate_registration_raises(name: str) -> None:
    entry = DETECTORS.get(name)
    with pytest.raises(ValueError, match="already registered"):
        DETECTORS.register(name, entry.params_model, "duplicate")(entry.fn)
    assert DETECTORS.get(name) is entry
