"""Shared real-data fixtures for detection tests."""

from __future__ import annotations

import pytest

from detection.datasets import DatasetUnavailable, load_source
from detection.readers import LoadedDataset


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
