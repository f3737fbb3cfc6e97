"""Outcome tests for the attacks that train something: ISSBA's hidden code and
the victim attack success of ISSBA, the input-aware dynamic attack and the
label-consistent (clean-label) attack on digits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from detection.attacks import plant
from detection.features import predict
from detection.models import Classifier, build_model
from detection.readers import LoadedDataset
from detection.training import (
    OptimConfig,
    TensorData,
    TrainConfig,
    to_tensor_data,
    train_classifier,
)
from detection.types import RunContext

N_TRAIN = 1297
EPOCHS = 15.0
Split = tuple[NDArray[np.int64], NDArray[np.int64]]


@pytest.fixture(scope="module", autouse=True)
def _threads() -> None:
    # these nets are tiny: a second thread gains little on a quiet machine and
    # costs 10x or more on a busy one (threads spin waiting for a core)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split(digits: LoadedDataset) -> Split:
    perm = np.random.default_rng(0).permutation(digits.labels.size).astype(np.int64)
    return perm[:N_TRAIN], perm[N_TRAIN:]


def _fit(x: NDArray[np.uint8], y: NDArray[np.int64]) -> tuple[Classifier, TensorData]:
    torch.manual_seed(0)
    model = build_model("small_cnn", (x.shape[3], x.shape[1], x.shape[2]), 10, 16)
    data = to_tensor_data(x, y, torch.device("cpu"))
    cfg = TrainConfig(EPOCHS, 64, OptimConfig(lr=0.05), augment=False)
    train_classifier(model, data, cfg, RunContext(seed=0))
    return model, data


def _accuracy(
    model: Classifier, ref: TensorData, x: NDArray[np.uint8], y: NDArray[np.int64]
) -> float:
    data = to_tensor_data(x, y, torch.device("cpu"))
    data = TensorData(data.x, data.y, ref.mean, ref.std)
    return float((predict(model, data).predictions == y).mean())


@pytest.fixture(scope="module")
def clean_accuracy(digits: LoadedDataset, split: Split) -> float:
    tr, te = split
    model, data = _fit(digits.x[tr], digits.labels[tr])
    return _accuracy(model, data, digits.x[te], digits.labels[te])


def test_issba_hides_a_decodable_sample_specific_code(digits: LoadedDataset, split: Split) -> None:
    tr, te = split
    p = plant("issba", digits.x[tr], digits.labels[tr], 10, {"rate": 0.05}, seed=0)
    assert p.info["bit_accuracy"] >= 0.95
    assert p.info["n_holdout"] > 0
    x = digits.x[te]
    residual = p.trigger(x).astype(np.float32) - x
    assert np.abs(residual).max() <= p.info["params"]["eps"] + 0.5
    assert np.abs(residual).mean() <= 6.0
    # sample-specific: on pixels clipped in neither image, a fixed additive
    # pattern would give identical residuals; ours differ by ~20% of |r|
    free = ((x > 10) & (x < 245))[:50].astype(np.float32)
    both = free[:, None] * free[None, :]
    diff = (np.abs(residual[:50, None] - residual[None, :50]) * both).sum(axis=(2, 3, 4))
    pairwise = diff / np.maximum(both.sum(axis=(2, 3, 4)), 1.0)
    interior = (np.abs(residual[:50]) * free).sum() / free.sum()
    assert pairwise[np.triu_indices(50, 1)].mean() >= 0.1 * interior


# clean-label on digits: measured victim ASR 0.03-0.16 with 80-90% of the
# target class poisoned, PGD eps 16-64/255 and a surrogate trained 3-10 epochs
# (the same settings reach 0.64 on Fashion-MNIST): the victim fits the
# perturbed target digits by their shape, training on them acting as
# adversarial training, so it never needs the corner trigger
CLEAN_LABEL_ON_DIGITS = pytest.mark.xfail(
    strict=True,
    reason="label-consistent poisons stay easy on digits; the victim ignores the trigger",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("issba", {"rate": 0.1}),
        ("dynamic", {"rate": 0.05}),
        pytest.param("clean_label", {"rate": 0.08, "eps": 16.0}, marks=CLEAN_LABEL_ON_DIGITS),
    ],
)
def test_victim_learns_trained_attacks(
    name: str,
    params: dict[str, Any],
    digits: LoadedDataset,
    split: Split,
    clean_accuracy: float,
) -> None:
    tr, te = split
    p = plant(name, digits.x[tr], digits.labels[tr], digits.n_classes, params, seed=0)
    model, data = _fit(p.x, p.labels)
    acc = _accuracy(model, data, digits.x[te], digits.labels[te])
    victims = p.victim_mask(digits.labels[te])
    x_trig = p.trigger(digits.x[te][victims])
    asr = _accuracy(model, data, x_trig, p.target_labels(digits.labels[te][victims]))
    assert asr >= 0.8, f"{name}: ASR {asr:.3f}"
    assert acc >= clean_accuracy - 0.05, f"{name}: acc {acc:.3f} vs clean {clean_accuracy:.3f}"
