"""Frequency detector: DCT, synthetic triggers, recall on real data, refusal on features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.fft import dctn

from detection.attacks import plant
from detection.datasets import split_reserve
from detection.defenses.frequency import DCT2, N_TRIGGER_KINDS, add_triggers
from detection.metrics import evaluate
from detection.readers import LoadedDataset
from detection.registry import run_detector
from detection.types import DetectionError, DetectionInput, RunContext


def test_dct2_matches_scipy() -> None:
    x = torch.rand(2, 3, 8, 6)
    expected = dctn(x.numpy(), axes=(2, 3), norm="ortho")
    assert np.allclose(DCT2(8, 6)(x).numpy(), expected, atol=1e-5)


def test_every_trigger_kind_changes_the_image_within_range() -> None:
    gen = torch.Generator()
    gen.manual_seed(0)
    x = torch.full((N_TRIGGER_KINDS * 4, 1, 16, 16), 0.5)
    kinds = torch.arange(N_TRIGGER_KINDS).repeat_interleave(4)
    out = add_triggers(x, kinds, gen)
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    changed = (out - x).abs().flatten(1).amax(dim=1) > 0.01
    assert changed.all()


def test_frequency_finds_badnet_on_digits(digits: LoadedDataset) -> None:
    torch.set_num_threads(1)
    inspected, reserve = split_reserve(digits.labels, 200, seed=0)
    attack = {"rate": 0.04, "target_class": 0}
    ps = plant("badnet", digits.x[inspected], digits.labels[inspected], 10, attack, seed=0)
    inp = DetectionInput(
        ps.x, ps.labels, 10, clean_x=digits.x[reserve], clean_labels=digits.labels[reserve]
    )
    raw = {"steps": 300, "threshold": "clean_fpr", "target_fpr": 0.05}
    result = run_detector("frequency", inp, raw, RunContext(device="cpu"))
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.9 and metrics["fpr"] <= 0.12, metrics
    assert metrics["auroc"] >= 0.97, metrics
    assert result.info["trained_on"] == "clean_reserve"
    assert ((result.scores >= 0) & (result.scores <= 1)).all()


def test_frequency_refuses_feature_vectors() -> None:
    rng = np.random.default_rng(0)
    inp = DetectionInput(rng.normal(size=(40, 5)), np.arange(40, dtype=np.int64) % 2, 2)
    with pytest.raises(DetectionError, match="needs images"):
        run_detector("frequency", inp, {}, RunContext(device="cpu"))
