"""Named offline sources and class-stratified subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detection.datasets import (
    DatasetUnavailable,
    load_source,
    source_names,
    split_reserve,
    stratified_subset,
)
from detection.readers import DatasetFormatError, LoadedDataset, write_npz


def test_digits(digits: LoadedDataset) -> None:
    assert digits.x.shape == (1797, 16, 16, 1) and digits.x.dtype == np.uint8
    assert digits.n_classes == 10 and digits.labels.dtype == np.int64
    assert digits.x.max() == 255 and digits.x.min() == 0
    assert min(digits.class_counts()) >= 170
    # Pixel replication: each 2x2 block is one original pixel.
    np.testing.assert_array_equal(digits.x[:, ::2, ::2], digits.x[:, 1::2, 1::2])


def test_digits32_and_subset() -> None:
    data = load_source("digits32", n_samples=200, seed=3)
    assert data.x.shape == (200, 32, 32, 1) and data.format == "digits32"
    assert all(19 <= c <= 21 for c in data.class_counts())
    with pytest.raises(ValueError, match="only a 'train' split"):
        load_source("digits", split="test")


def test_unknown_source_and_split() -> None:
    with pytest.raises(ValueError, match="unknown data source"):
        load_source("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_source("digits", split="val")
    assert {"digits", "fashion-mnist", "cifar10:PATH", "npz:PATH"} <= set(source_names())


def test_fashion_missing_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import detection.datasets as ds

    monkeypatch.setattr(ds, "SYSTEM_DATA_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetUnavailable, match="apt-get install -y dataset-fashion-mnist"):
        load_source("fashion-mnist", data_dir=tmp_path)


@pytest.mark.data
def test_fashion_mnist_counts() -> None:
    try:
        train = load_source("fashion-mnist")
        test = load_source("fashion-mnist", split="test")
    except DatasetUnavailable as err:
        pytest.skip(str(err))
    assert train.x.shape == (60_000, 28, 28, 1) and test.n_samples == 10_000
    assert train.class_counts() == [6000] * 10 and test.class_counts() == [1000] * 10
    assert train.class_names is not None and train.class_names[9] == "Ankle boot"
    train.x[0, 0, 0, 0] = 7  # handed-out arrays are writable copies
    assert load_source("fashion-mnist", n_samples=10).x.flags.writeable


@pytest.mark.data
def test_fashion_small_and_32x3(fashion_small: LoadedDataset) -> None:
    assert fashion_small.n_samples == 3000 and fashion_small.class_counts() == [300] * 10
    wide = load_source("fashion-mnist-32x3", split="test", n_samples=500, seed=0)
    assert wide.x.shape == (500, 32, 32, 3)
    assert (wide.x[:, :2] == 0).all() and (wide.x[..., 0] == wide.x[..., 2]).all()
    same = load_source("fashion-mnist", split="test", n_samples=500, seed=0)
    np.testing.assert_array_equal(wide.x[:, 2:30, 2:30, 1], same.x[..., 0])


def test_stratified_subset() -> None:
    labels = np.repeat(np.arange(3), [50, 30, 20])
    idx = stratified_subset(labels, 10, seed=1)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2]
    np.testing.assert_array_equal(idx, stratified_subset(labels, 10, seed=1))
    assert not np.array_equal(idx, stratified_subset(labels, 10, seed=2))
    odd = stratified_subset(labels, 7, seed=0)  # 3.5, 2.1, 1.4 -> 4, 2, 1
    assert np.bincount(labels[odd]).tolist() == [4, 2, 1]
    assert stratified_subset(labels, 500, seed=0).size == 100


def test_split_reserve_is_disjoint_and_stratified(digits: LoadedDataset) -> None:
    inspected, reserve = split_reserve(digits.labels, 200, seed=0)
    assert reserve.size == 200 and inspected.size == digits.n_samples - 200
    assert np.intersect1d(inspected, reserve).size == 0
    assert np.union1d(inspected, reserve).size == digits.n_samples
    assert all(19 <= c <= 21 for c in np.bincount(digits.labels[reserve]))
    with pytest.raises(ValueError, match="n_reserve"):
        split_reserve(digits.labels, digits.n_samples, seed=0)


def test_path_sources(tmp_path: Path) -> None:
    write_npz(tmp_path / "d.npz", np.zeros((20, 3)), np.arange(20) % 2)
    assert load_source(f"npz:{tmp_path / 'd.npz'}").n_samples == 20
    assert load_source(str(tmp_path / "d.npz"), n_samples=10).class_counts() == [5, 5]
    with pytest.raises(DatasetFormatError):
        load_source(f"zip:{tmp_path / 'd.npz'}")


def _cifar_dir(root: Path, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    records = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
    records[:, 0] %= 10
    for i in range(1, 6):
        records.tofile(root / f"data_batch_{i}.bin")
    records[:4].tofile(root / "test_batch.bin")
    (root / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return records


def test_cifar10_binary(tmp_path: Path) -> None:
    records = _cifar_dir(tmp_path, 6)
    data = load_source(f"cifar10:{tmp_path}")
    assert data.x.shape == (30, 32, 32, 3) and data.class_names == [f"c{i}" for i in range(10)]
    # Channel-planar records: red plane first, then green, then blue.
    np.testing.assert_array_equal(data.x[1, :, :, 1].reshape(-1), records[1, 1025:2049])
    assert data.labels[:6].tolist() == records[:, 0].tolist()
    assert load_source(f"cifar10:{tmp_path}", split="test").n_samples == 4


def test_cifar10_python_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x02")
    with pytest.raises(DatasetFormatError, match="pickled"):
        load_source(f"cifar10:{tmp_path}")
    with pytest.raises(DatasetUnavailable, match="binary version"):
        load_source(f"cifar10:{tmp_path / 'empty'}")
