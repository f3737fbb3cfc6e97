"""Confusion Training: the pure identification pieces, params, checkpoints, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from detection.attacks import plant
from detection.defenses.ct import detect
from detection.defenses.ct_identify import (
    class_frequencies,
    confusion_shifts,
    ct_scores,
    distill_indices,
    likelihood_ratio_test,
    stratified_reserve,
)
from detection.defenses.ct_params import PRESETS, CTParams
from detection.metrics import auroc, evaluate
from detection.readers import LoadedDataset
from detection.registry import parse_detector_params
from detection.types import DetectionInput, JobCancelled, RunContext

torch.set_num_threads(1)  # the CI box is small and shared; 1 thread avoids oversubscription

# A schedule small enough for unit tests (full algorithm, every stage, few steps).
TINY: dict[str, Any] = {
    "width": 8,
    "batch_size": 32,
    "pretrain_epochs": [1.0] * 6,
    "confusion_iters": [8] * 6,
    "confusion_passes": None,
    "base_epochs": 1.0,
    "reserve_probe_epochs": 1.0,
    "device": "cpu",
}


# --------------------------------------------------------------------------- pure functions


def _constructed(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """3 classes x 300 samples in 16-D; class 0 hides 30 samples in a tight far cluster.

    The confused model "predicts" the tight cluster (isolated) in class 0 and a
    random 30 of the other classes, which are drawn from the class's own law.
    """
    n_c, dim = 300, 16
    feats = rng.normal(size=(3 * n_c, dim)) + np.repeat(np.eye(3, dim) * 10.0, n_c, axis=0)
    labels = np.repeat(np.arange(3), n_c).astype(np.int64)
    poison = np.arange(30)
    feats[poison] = 6.0 + 0.05 * rng.normal(size=(30, dim))
    preds = (labels + 1) % 3
    preds[poison] = 0
    others = np.concatenate([rng.choice(np.arange(c * n_c, (c + 1) * n_c), 30) for c in (1, 2)])
    preds[others] = labels[others]
    return feats, labels, preds.astype(np.int64), poison


def test_lr_test_flags_tight_isolated_cluster_only() -> None:
    feats, labels, preds, poison = _constructed(np.random.default_rng(0))
    test = likelihood_ratio_test(feats, labels, preds, 3)
    assert test.ratios[0] > 2.0
    assert test.ratios[1] < 1.5 and test.ratios[2] < 1.5
    assert test.flagged_classes == [0]
    assert np.array_equal(np.flatnonzero(test.flags), poison)
    assert np.isfinite(test.ratios).all() and np.isfinite(test.sample_llr).all()


def test_lr_test_uniform_classes_flag_nothing() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(600, 8))
    labels = np.repeat(np.arange(2), 300).astype(np.int64)
    preds = np.where(rng.random(600) < 0.2, labels, 1 - labels).astype(np.int64)
    test = likelihood_ratio_test(feats, labels, preds, 2)
    assert np.all(np.abs(test.ratios - 1.0) < 0.2)
    assert test.flagged_classes == [] and not test.flags.any()


def test_lr_test_degenerate_groups_give_ratio_one() -> None:
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(40, 4))
    labels = np.repeat(np.arange(2), 20).astype(np.int64)
    preds = 1 - labels  # nothing isolated
    preds[0] = labels[0]  # one isolated sample: too few for a Gaussian
    test = likelihood_ratio_test(feats, labels, preds, 2)
    assert np.array_equal(test.ratios, np.ones(2))
    assert not test.flags.any()


def test_scores_rank_flagged_first_and_stay_finite() -> None:
    feats, labels, preds, poison = _constructed(np.random.default_rng(0))
    test = likelihood_ratio_test(feats, labels, preds, 3)
    confidence = np.where(preds == labels, 0.9, 0.05)
    scores = ct_scores(confidence, labels, test)
    assert np.isfinite(scores).all()
    assert scores[test.flags].min() > scores[~test.flags].max()
    mask = np.zeros(labels.size, dtype=bool)
    mask[poison] = True
    assert auroc(scores, mask) == 1.0


def test_scores_rank_suspected_isolated_set_even_without_flags() -> None:
    feats, labels, preds, poison = _constructed(np.random.default_rng(3))
    # Thresholds no class can pass: the LR rule flags nothing (short-training regime).
    test = likelihood_ratio_test(feats, labels, preds, 3, threshold=1e30, max_class_threshold=1e30)
    assert not test.flags.any()
    confidence = np.where(preds == labels, 0.7, 0.1)
    confidence[poison] = 0.6  # poisons are not even the most confident samples
    scores = ct_scores(confidence, labels, test)
    mask = np.zeros(labels.size, dtype=bool)
    mask[poison] = True
    assert auroc(scores, mask) == 1.0


def test_confusion_shifts_never_zero_mod_c() -> None:
    for c in (2, 3, 10, 43):
        shifts = confusion_shifts(500, c)
        assert shifts.min() >= 1 and shifts.max() <= c - 1
        assert not np.any(shifts % c == 0)
    assert np.array_equal(confusion_shifts(5, 4), [1, 2, 3, 1, 2])
    assert np.all(confusion_shifts(7, 2) == 1)


def test_class_frequencies() -> None:
    labels = np.array([0, 0, 0, 1], dtype=np.int64)
    f = class_frequencies(labels, 3, last_round=False)
    assert np.allclose(f, np.sqrt(np.array([0.75, 0.25, 0.0]) + 0.001))
    assert np.array_equal(class_frequencies(labels, 3, last_round=True), np.ones(3))


def test_distill_keeps_lowest_loss_and_tops_up_each_class() -> None:
    labels = np.repeat(np.arange(2), 100).astype(np.int64)
    losses = np.concatenate([np.linspace(0, 1, 100), np.linspace(2, 3, 100)])
    kept = distill_indices(losses, labels, 2, ratio=0.1, topup=0.05)
    # 20 lowest-loss samples are all class 0; class 1 is topped up with its 5 lowest.
    assert np.array_equal(kept, np.concatenate([np.arange(20), np.arange(100, 105)]))


def test_stratified_reserve_draws_from_the_loss_band_with_class_shares() -> None:
    labels = np.concatenate([np.zeros(600), np.ones(300), np.full(100, 2)]).astype(np.int64)
    losses = np.random.default_rng(1).uniform(1.0, 2.0, size=1000)
    losses[:60] = 0.01  # learned "poisons": lowest tail of class 0
    losses[60:120] = 9.0  # not yet learned "poisons": highest tail of class 0
    idx, n_outside = stratified_reserve(
        labels, losses, 100, 3, np.random.default_rng(0), (0.25, 0.75)
    )
    assert np.unique(idx).size == idx.size == 100 and n_outside == 0
    assert not np.isin(np.arange(120), idx).any()
    assert np.array_equal(np.bincount(labels[idx], minlength=3), [60, 30, 10])
    # A band narrower than the share: the samples nearest the class median fill it.
    idx, n_outside = stratified_reserve(
        labels, losses, 500, 3, np.random.default_rng(0), (0.45, 0.55)
    )
    assert n_outside > 0 and not np.isin(np.arange(120), idx).any()


# --------------------------------------------------------------------------- params


def test_params_fast_by_default_and_preset_fills_everything() -> None:
    fast = CTParams()
    assert fast.preset == "fast" and fast.arch == "auto" and fast.width == 16
    paper = CTParams(preset="cifar10")
    assert paper.arch == "resnet18" and paper.batch_size == 32
    assert paper.pretrain_epochs == [100.0, 100.0, 40.0, 40.0, 40.0, 40.0]
    assert paper.confusion_iters == [6000, 6000, 6000, 6000, 2000, 2000]
    assert paper.lambdas == [20.0, 20.0, 20.0, 30.0, 30.0, 15.0]
    assert CTParams(preset="gtsrb").batch_factors == [2, 2, 4, 8, 8, 2]
    assert CTParams(preset="tabular").arch == "mlp"
    assert set(PRESETS) == {"cifar10", "cifar10-fast", "gtsrb", "tabular", "fast"}


def test_params_override_wins_and_dump_round_trips() -> None:
    p = CTParams(preset="cifar10", batch_size=64, lrs=[0.5] * 6)
    assert p.batch_size == 64 and p.lrs == [0.5] * 6 and p.momentum == 0.7
    dumped = p.model_dump()
    assert dumped["pretrain_epochs"] == [100.0, 100.0, 40.0, 40.0, 40.0, 40.0]
    assert CTParams.model_validate(dumped) == p
    assert parse_detector_params("ct", {"preset": "gtsrb", "width": 32}).model_dump()["width"] == 32


@pytest.mark.parametrize(
    "bad",
    [
        {"lambdas": [20.0] * 5},
        {"ratios": [0.5, 0.2]},
        {"lrs": [1e-3] * 6 + [1e-3]},
        {"lambdas": [0.5] * 6},
        {"ratios": [0.5, 0.2, 0.04, 0.02, 0.0]},
        {"batch_factors": [0] * 6},
        {"preset": "imagenet"},
        {"unknown_field": 1},
    ],
)
def test_params_reject_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CTParams.model_validate(bad)


# --------------------------------------------------------------------------- runs


def _split(digits: LoadedDataset, n_reserve: int, seed: int) -> tuple[np.ndarray, ...]:
    perm = np.random.default_rng(seed).permutation(digits.n_samples)
    held, main = perm[:n_reserve], perm[n_reserve:]
    return digits.x[main], digits.labels[main], digits.x[held], digits.labels[held]


def test_runs_on_three_channel_small_images_and_features() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(120, 8, 10, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 40).astype(np.int64)
    res = detect(DetectionInput(x, labels, 3), CTParams(**TINY), RunContext(device="cpu"))
    assert res.scores.shape == (120,) and np.isfinite(res.scores).all()
    assert res.info["clean_reserve"]["source"] == "drawn" and len(res.info["distilled_sizes"]) == 6
    assert len(res.classes) == 3 and all(c.statistic is not None for c in res.classes)
    feats = rng.normal(size=(150, 7)).astype(np.float32)
    labels = np.repeat(np.arange(3), 50).astype(np.int64)
    res = detect(DetectionInput(feats, labels, 3), CTParams(**TINY), RunContext(device="cpu"))
    assert res.info["arch"] == "mlp" and res.scores.shape == (150,)


def test_resume_from_checkpoint_matches_uninterrupted_run(
    digits: LoadedDataset, tmp_path: Path
) -> None:
    x, y, cx, cy = _split(digits, 100, 0)
    inp = DetectionInput(x[:400], y[:400], 10, cx, cy)
    params = CTParams(**TINY)
    full = detect(inp, params, RunContext(device="cpu", seed=3))

    stages: list[str] = []
    ctx = RunContext(
        device="cpu",
        seed=3,
        progress=lambda stage, frac: stages.append(stage),
        should_cancel=lambda: any(s.startswith("round 4/6") for s in stages),
        scratch_dir=tmp_path,
    )
    with pytest.raises(JobCancelled):
        detect(inp, params, ctx)
    (path,) = tmp_path.glob("ct_*.pt")
    saved = torch.load(path, weights_only=True)  # plain tensors, dicts and lists only
    rounds = saved["rounds"]
    assert rounds["next_round"] == 3 and len(rounds["evidence"]) == 3
    kept = [rec["kept"] for rec in rounds["records"]]
    assert kept == full.info["distilled_sizes"][:3]
    assert rounds["distilled"].numel() == kept[-1]
    assert saved["head"]["canaries"].numel() == 30  # 30% of the 100-sample reserve
    stages.clear()
    resumed = detect(
        inp, params, RunContext(device="cpu", seed=3, progress=ctx.progress, scratch_dir=tmp_path)
    )
    assert resumed.info["resumed_from"] == "round_2"
    assert not any(s.startswith(("round 1/6", "round 3/6")) for s in stages)
    assert any(s.startswith("round 4/6") for s in stages) and stages[-1] == "done"
    assert resumed.info["distilled_sizes"] == full.info["distilled_sizes"]
    np.testing.assert_allclose(resumed.scores, full.scores, rtol=1e-5, atol=1e-6)
    # A different schedule never picks up this checkpoint.
    other = detect(
        inp,
        CTParams(**{**TINY, "batch_size": 16}),
        RunContext(device="cpu", seed=3, scratch_dir=tmp_path),
    )
    assert other.info["resumed_from"] is None


def _planted_run(
    digits: LoadedDataset, attack: str, with_reserve: bool, seed: int = 0
) -> dict[str, Any]:
    x, y, cx, cy = _split(digits, 200, seed)
    ps = plant(attack, x, y, 10, {"rate": 0.03, "target_class": 0}, seed=seed)
    inp = DetectionInput(
        ps.x, ps.labels, 10, cx if with_reserve else None, cy if with_reserve else None
    )
    res = detect(inp, CTParams(device="cpu"), RunContext(device="cpu", seed=seed))
    metrics = evaluate(res.scores, res.flags, ps.poison_indices)
    metrics["result"] = res
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["badnet", "blend"])
def test_fast_preset_finds_poisons_with_given_reserve(digits: LoadedDataset, attack: str) -> None:
    m = _planted_run(digits, attack, with_reserve=True)
    assert m["tpr"] >= 0.9 and m["fpr"] <= 0.05, m
    assert m["auroc"] >= 0.98
    assert m["result"].target_classes == [0]


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["badnet", "blend"])
def test_fast_preset_finds_poisons_with_drawn_reserve(digits: LoadedDataset, attack: str) -> None:
    # 3% poisons are a quarter of the target class of this easy set: a fitted model fits
    # everything, so the first draw holds poisons; the redraw after round 0 must drop them.
    m = _planted_run(digits, attack, with_reserve=False)
    assert m["tpr"] >= 0.9 and m["fpr"] <= 0.05, m
    info = m["result"].info
    reserve = info["clean_reserve"]
    assert info["reserve_drawn"] and reserve["size"] > 100 and reserve["canaries"] > 30
    assert reserve["redrawn"]["after_round"] == 0


def test_tiny_feature_set_trains_through_batches_of_one() -> None:
    # 12 samples: distillation can leave a single sample, and batch norm cannot train on one.
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(12, 5)).astype(np.float32)
    labels = np.repeat(np.arange(3), 4).astype(np.int64)
    params = CTParams(**{**TINY, "ratios": [0.1] * 5})
    res = detect(DetectionInput(feats, labels, 3), params, RunContext(device="cpu"))
    assert res.scores.shape == (12,) and np.isfinite(res.scores).all()
    assert min(res.info["distilled_sizes"][:5]) <= 3


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "with_reserve"), [(0, False), (1, True)])
def test_fast_preset_finds_one_percent_badnet_on_fashion(
    fashion_small: LoadedDataset, seed: int, with_reserve: bool
) -> None:
    # Real photos-like data at a realistic rate: 26 poisons among 2,600 Fashion-MNIST images.
    x, y, cx, cy = _split(fashion_small, 400, seed)
    target = (3 * seed + 1) % 10
    ps = plant("badnet", x, y, 10, {"rate": 0.01, "target_class": target}, seed=seed)
    inp = DetectionInput(
        ps.x, ps.labels, 10, cx if with_reserve else None, cy if with_reserve else None
    )
    res = detect(inp, CTParams(device="cpu"), RunContext(device="cpu", seed=seed))
    m = evaluate(res.scores, res.flags, ps.poison_indices)
    assert m["tpr"] >= 0.9 and m["fpr"] <= 0.02, m
    assert m["auroc"] >= 0.99 and res.target_classes == [target]
