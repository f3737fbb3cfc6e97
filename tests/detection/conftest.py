"""Shared real-data fixtures for detection tests."""

from __future__ import annotations

import pytest
import torch

from detection.attacks import PoisonedSet, plant
from detection.datasets import DatasetUnavailable, load_source, split_reserve
from detection.readers import LoadedDataset
from detection.types import DetectionInput


@pytest.fixture(scope="session")
def digits() -> LoadedDataset:
    """scikit-learn digits: 1,797 real 16x16x1 uint8 images, 10 classes."""
    return load_source("digits")


@pytest.fixture(scope="session")
def fashion_small() -> LoadedDataset:
    """A 3,000-sample class-stratified subset of Fashion-MNIST train (28x28x1)."""
    try:
        return load_source("fashion-mnist", n_samples=3000, seed=0)
    except DatasetUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def poisoned_digits(digits: LoadedDataset) -> tuple[DetectionInput, PoisonedSet]:
    """Digits minus a 200-sample clean reserve, 4% BadNet into class 0.

    At 4% the poisons are ~29% of class 0: below AC's 35% cluster-size rule.
    """
    torch.set_num_threads(1)
    inspected, reserve = split_reserve(digits.labels, 200, seed=0)
    attack = {"rate": 0.04, "target_class": 0}
    ps = plant("badnet", digits.x[inspected], digits.labels[inspected], 10, attack, seed=0)
    inp = DetectionInput(
        ps.x, ps.labels, 10, clean_x=digits.x[reserve], clean_labels=digits.labels[reserve]
    )
    return inp, ps
