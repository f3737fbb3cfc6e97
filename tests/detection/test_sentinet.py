"""SentiNet: Grad-CAM masks, the clean boundary, recall on real data, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detection.attacks import PoisonedSet
from detection.defenses.sentinet import fit_boundary, grad_cam_masks
from detection.metrics import evaluate
from detection.models import build_model
from detection.registry import run_detector
from detection.types import DetectionError, DetectionInput, RunContext

BASE_MODEL = {"arch": "small_cnn", "epochs": 12}


def test_grad_cam_masks_cover_the_region_share_without_touching_weights() -> None:
    model = build_model("small_cnn", (1, 16, 16), 10, width=8).eval()
    masks, preds = grad_cam_masks(model, torch.randn(5, 1, 16, 16), share=0.15)
    assert masks.shape == (5, 1, 16, 16) and preds.shape == (5,)
    assert masks.sum(dim=(1, 2, 3)).tolist() == pytest.approx([0.15 * 256] * 5, abs=2)
    assert all(p.grad is None for p in model.parameters())


def test_fit_boundary_lies_over_clean_points() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 500)
    fooled = np.clip(0.5 * conf + rng.normal(0, 0.05, 500), 0, 1)
    coef = fit_boundary(conf, fooled, n_bins=10, quantile=0.95)
    assert ((fooled - np.polyval(coef, conf)) > 0).mean() < 0.12


def test_sentinet_finds_badnet_on_digits(
    poisoned_digits: tuple[DetectionInput, PoisonedSet],
) -> None:
    inp, ps = poisoned_digits
    raw = {"n_carriers": 16, "target_fpr": 0.05, "base_model": BASE_MODEL}
    result = run_detector("sentinet", inp, raw, RunContext(device="cpu"))
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.9 and metrics["fpr"] <= 0.1, metrics
    assert metrics["auroc"] >= 0.93, metrics
    assert len(result.info["boundary"]) == 3


def test_sentinet_refuses_features_and_missing_reserve(
    poisoned_digits: tuple[DetectionInput, PoisonedSet],
) -> None:
    inp, _ = poisoned_digits
    with pytest.raises(DetectionError, match="clean reserve"):
        run_detector("sentinet", DetectionInput(inp.x, inp.labels, 10), {}, RunContext())
    rng = np.random.default_rng(0)
    feats = DetectionInput(rng.normal(size=(40, 5)), np.arange(40, dtype=np.int64) % 2, 2)
    with pytest.raises(DetectionError, match="need images"):
        run_detector("sentinet", feats, {}, RunContext())
