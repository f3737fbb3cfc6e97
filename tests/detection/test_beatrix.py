"""Beatrix: Gram features of an intermediate map, recall on real data, refusal without reserve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detection.attacks import PoisonedSet
from detection.defenses.beatrix import feature_map, gram_features
from detection.metrics import evaluate
from detection.models import build_model
from detection.registry import parse_detector_params, requires_clean_reserve, run_detector
from detection.types import DetectionError, DetectionInput, RunContext

BASE_MODEL = {"arch": "small_cnn", "epochs": 12}


def test_gram_features_of_every_order() -> None:
    fmap = torch.rand(2, 3, 5)
    g = gram_features(fmap, max_order=2)
    assert g.shape == (2, 2, 6)  # 2 samples, orders 1..2, 3*4/2 entries
    first = fmap[0] @ fmap[0].T
    rows, cols = torch.triu_indices(3, 3)
    assert torch.allclose(g[0, 0], first[rows, cols])
    second = (fmap[1] ** 2 @ (fmap[1] ** 2).T).sqrt()
    assert torch.allclose(g[1, 1], second[rows, cols], atol=1e-6)


def test_feature_map_is_the_last_map_before_pooling() -> None:
    model = build_model("small_cnn", (1, 16, 16), 10, width=8).eval()
    assert feature_map(model, torch.zeros(4, 1, 16, 16)).shape == (4, 32, 16)  # 4x4 positions
    mlp = build_model("mlp", (6,), 3, width=16).eval()
    assert feature_map(mlp, torch.zeros(4, 6)).shape == (4, 16, 1)


def test_beatrix_finds_badnet_on_digits(
    poisoned_digits: tuple[DetectionInput, PoisonedSet],
) -> None:
    inp, ps = poisoned_digits
    raw = {"target_fpr": 0.05, "base_model": BASE_MODEL}
    result = run_detector("beatrix", inp, raw, RunContext(device="cpu"))
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.9 and metrics["fpr"] <= 0.1, metrics
    assert metrics["auroc"] >= 0.97, metrics
    assert result.info["threshold"]["rule"] == "clean_fpr"
    assert np.isfinite(result.scores).all()


def test_beatrix_refuses_without_a_reserve(
    poisoned_digits: tuple[DetectionInput, PoisonedSet],
) -> None:
    inp, _ = poisoned_digits
    assert requires_clean_reserve(parse_detector_params("beatrix", {}))
    bare = DetectionInput(inp.x, inp.labels, inp.n_classes)
    with pytest.raises(DetectionError, match="clean reserve"):
        run_detector("beatrix", bare, {}, RunContext(device="cpu"))
