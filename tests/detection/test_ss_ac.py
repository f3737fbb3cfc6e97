"""Spectral Signatures and Activation Clustering: scoring math and real-data recall."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from detection.attacks import PoisonedSet
from detection.base_model import BaseModelParams
from detection.cache import CachedModelModified
from detection.defenses.ac import activation_clustering, cluster_class
from detection.defenses.common import class_groups, fitted_base_model, robust_outlier_classes
from detection.defenses.ss import spectral_fit, spectral_scores, tail_shares
from detection.metrics import evaluate
from detection.registry import run_detector
from detection.thresholds import clean_fpr_cut, flag_top_fraction
from detection.types import DetectionError, DetectionInput, RunContext

BASE_MODEL = {"arch": "small_cnn", "epochs": 12}


def _blobs(
    n_per_class: int, n_classes: int, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class).astype(np.int64)
    centres = rng.normal(0.0, 6.0, (n_classes, dim))
    features = centres[labels] + rng.normal(0.0, 1.0, (labels.size, dim))
    return features, labels, rng


def _plant_subcluster(
    features: np.ndarray, labels: np.ndarray, cls: int, share: float, shift: float
) -> np.ndarray:
    """Shift the first ``share`` of class ``cls`` along one axis; return their indices."""
    idx = np.flatnonzero(labels == cls)
    moved = idx[: int(share * idx.size)]
    features[moved, 0] += shift
    return moved


# --------------------------------------------------------------------------- helpers


def test_class_groups_partition_by_label() -> None:
    labels = np.array([2, 0, 2, 1, 0, 2], dtype=np.int64)
    groups = class_groups(labels, 4)
    assert [g.tolist() for g in groups] == [[1, 4], [3], [0, 2, 5], []]


def test_budget_flags_top_fraction_of_each_class() -> None:
    scores = np.array([5.0, 1.0, 3.0, 2.0, 9.0, 8.0, 7.0, 0.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int64)
    flags = flag_top_fraction(scores, 0.5, labels)
    assert np.flatnonzero(flags).tolist() == [0, 2, 4, 5]
    assert not flag_top_fraction(scores, 0.2, labels).any()


def test_clean_fpr_threshold_bounds_reserve_fpr() -> None:
    reserve = np.arange(100, dtype=np.float64)
    cut = clean_fpr_cut(reserve, 0.05)
    assert (reserve > cut).mean() <= 0.05
    assert (reserve > cut).mean() >= 0.04
    with pytest.raises(DetectionError, match="empty"):
        clean_fpr_cut(np.array([]), 0.05)


def test_robust_outlier_classes() -> None:
    stats = np.array([0.01, 0.02, 0.0, 0.01, 0.30, np.nan])
    assert robust_outlier_classes(stats, 3.5, min_mad=0.003) == [4]
    assert robust_outlier_classes(np.zeros(5), 3.5, min_mad=0.003) == []


# --------------------------------------------------------------------------- SS math


def test_spectral_scores_rank_shifted_subcluster_first() -> None:
    features, labels, _ = _blobs(200, 5, 16, seed=0)
    moved = _plant_subcluster(features, labels, cls=3, share=0.15, shift=8.0)
    fit = spectral_fit(features, labels, 5)
    scores = spectral_scores(fit, features, labels)
    top = np.argsort(-scores)[: moved.size]
    assert set(top.tolist()) == set(moved.tolist())
    assert abs(fit.directions[3, 0]) > 0.9  # the top direction is the shift axis
    shares = tail_shares(scores, labels, 5)
    assert robust_outlier_classes(shares, 3.5, min_mad=0.003) == [3]


def test_spectral_clean_fpr_with_reserve() -> None:
    features, labels, rng = _blobs(300, 4, 16, seed=1)
    moved = _plant_subcluster(features, labels, cls=0, share=0.25, shift=10.0)
    fit = spectral_fit(features, labels, 4)
    scores = spectral_scores(fit, features, labels)
    # A reserve drawn from the clean class distributions, scored against the same fit.
    reserve_labels = np.repeat(np.arange(4), 100).astype(np.int64)
    clean_idx = np.setdiff1d(np.arange(labels.size), moved)
    picks = np.concatenate([rng.choice(clean_idx[labels[clean_idx] == c], 100) for c in range(4)])
    reserve = features[picks] + rng.normal(0.0, 0.05, (picks.size, 16))
    cut = clean_fpr_cut(spectral_scores(fit, reserve, reserve_labels), 0.05)
    poison = np.zeros(labels.size, dtype=bool)
    poison[moved] = True
    flags = scores > cut
    assert flags[poison].mean() == 1.0
    assert flags[~poison].mean() <= 0.1


# --------------------------------------------------------------------------- AC math


def test_cluster_class_flags_small_separated_cluster_only() -> None:
    features, labels, _ = _blobs(250, 4, 32, seed=2)
    moved = _plant_subcluster(features, labels, cls=2, share=0.2, shift=12.0)
    scores, flags, fits = activation_clustering(features, labels, 4)
    assert set(np.flatnonzero(flags).tolist()) == set(moved.tolist())
    assert [c for c, f in enumerate(fits) if f is not None and f.suspect] == [2]
    assert scores[flags].min() >= 1.0 > scores[~flags].max()
    fit2 = fits[2]
    assert fit2 is not None
    assert fit2.small_fraction == pytest.approx(0.2) and fit2.silhouette > 0.5


def test_cluster_class_leaves_balanced_split_alone() -> None:
    rng = np.random.default_rng(3)
    two_modes = np.concatenate([rng.normal(0, 1, (100, 12)), rng.normal(0, 1, (100, 12)) + 9])
    fit = cluster_class(two_modes)
    assert fit is not None
    assert fit.small_fraction == pytest.approx(0.5) and fit.silhouette > 0.5
    assert not fit.suspect
    assert cluster_class(np.ones((50, 8))) is None


# --------------------------------------------------------------------------- real data


# One run context for the module, so its detectors share one base model as in a job.
MODULE_CTX = RunContext(device="cpu")


def _run(inp: DetectionInput, name: str, raw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    result = run_detector(name, inp, {**raw, "base_model": BASE_MODEL}, MODULE_CTX)
    return result, result.info


def test_ss_finds_badnet_on_digits(poisoned_digits: tuple[DetectionInput, PoisonedSet]) -> None:
    inp, ps = poisoned_digits
    result, info = _run(inp, "ss", {"threshold": "clean_fpr", "target_fpr": 0.05})
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.9 and metrics["fpr"] <= 0.1, metrics
    assert metrics["auroc"] >= 0.97, metrics
    assert result.target_classes == [0]
    assert info["threshold"]["rule"] == "clean_fpr" and info["base_model_accuracy"] > 0.9


def test_ss_budget_rule_flags_its_share(
    poisoned_digits: tuple[DetectionInput, PoisonedSet],
) -> None:
    inp, ps = poisoned_digits
    result, info = _run(inp, "ss", {"threshold": "budget", "budget": 0.3})
    counts = np.bincount(inp.labels, minlength=10)
    assert [c.n_flagged for c in result.classes] == np.floor(0.45 * counts).astype(int).tolist()
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.9, metrics
    assert info["threshold"] == {"rule": "budget", "fraction_per_class": pytest.approx(0.45)}


def test_ac_finds_badnet_on_digits(poisoned_digits: tuple[DetectionInput, PoisonedSet]) -> None:
    inp, ps = poisoned_digits
    result, info = _run(inp, "ac", {})
    metrics = evaluate(result.scores, result.flags, ps.poison_indices)
    assert metrics["tpr"] >= 0.9 and metrics["fpr"] <= 0.1, metrics
    assert metrics["auroc"] >= 0.97, metrics
    assert 0 in result.target_classes
    assert result.classes[0].suspected and result.classes[0].statistic is not None
    assert info["threshold"]["rule"] == "clusters"


def test_ss_clean_fpr_needs_reserve(poisoned_digits: tuple[DetectionInput, PoisonedSet]) -> None:
    inp, _ = poisoned_digits
    bare = DetectionInput(inp.x, inp.labels, inp.n_classes)
    with pytest.raises(DetectionError, match="clean reserve"):
        run_detector("ss", bare, {"threshold": "clean_fpr"}, RunContext(device="cpu"))


def test_base_model_is_shared_through_the_run_context() -> None:
    rng = np.random.default_rng(4)
    inp = DetectionInput(rng.normal(size=(64, 6)), rng.integers(0, 3, 64).astype(np.int64), 3)
    params = BaseModelParams(epochs=1)
    ctx = RunContext(device="cpu")
    first = fitted_base_model(inp, params, ctx)
    assert fitted_base_model(inp, params, ctx.sub(0.5, 1.0)) is first
    # Keyed by content: an equal copy of the data hits, other params or data miss.
    same = DetectionInput(inp.x.copy(), inp.labels.copy(), 3)
    assert fitted_base_model(same, params, ctx) is first
    assert fitted_base_model(inp, BaseModelParams(epochs=2), ctx) is not first
    relabelled = DetectionInput(inp.x, (inp.labels + 1) % 3, 3)
    assert fitted_base_model(relabelled, params, ctx) is not first
    # Nothing is shared between runs, and a cached model is read-only.
    assert fitted_base_model(inp, params, RunContext(device="cpu")) is not first
    second = fitted_base_model(inp, BaseModelParams(epochs=2), ctx)
    with torch.no_grad():
        second.model.head.bias.add_(1.0)
    with pytest.raises(CachedModelModified, match="deepcopy"):
        fitted_base_model(inp, BaseModelParams(epochs=2), ctx)
