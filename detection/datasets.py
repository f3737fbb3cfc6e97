"""Named offline data sources and class-stratified subsets.

Sources (nothing is downloaded at run time):

``digits``
    scikit-learn's bundled 1,797 real 8x8 digits, scaled to uint8 0..255 and
    upsampled 2x by pixel replication to 16x16x1. Has one split, ``train``.
``digits32``
    The same, upsampled 4x to 32x32x1.
``fashion-mnist``
    Fashion-MNIST, 60,000 train / 10,000 test 28x28x1 images, read from
    ``<data_dir>/fashion-mnist`` then ``/usr/share/datasets/fashion-mnist``
    (Debian package ``dataset-fashion-mnist``).
``fashion-mnist-32x3``
    Fashion-MNIST zero-padded to 32x32 and replicated to 3 channels: the size
    and shape of CIFAR-10, for comparable timings.
``cifar10:PATH``
    CIFAR-10's *binary* version (``data_batch_{1..5}.bin``, ``test_batch.bin``)
    in ``PATH`` or ``PATH/cifar-10-batches-bin``. The pickled python version
    is refused.
``npz:PATH``, ``zip:PATH``, ``tar:PATH``, ``parquet:PATH``, ``csv:PATH`` or a bare path
    :func:`detection.readers.read_dataset`.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from detection.readers import FORMATS, DatasetFormatError, LoadedDataset, read_dataset

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
FASHION_INSTALL = "apt-get install -y dataset-fashion-mnist"
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FASHION_FILES = {"train": "train", "test": "t10k"}
_CIFAR_RECORD = 1 + 32 * 32 * 3


class DatasetUnavailable(RuntimeError):
    """A named source that is not installed here; the message says how to get it."""


Loader = Callable[[Path | None, str], LoadedDataset]


def source_names() -> list[str]:
    """Every accepted source name (``PATH`` stands for a file or directory)."""
    return [*_NAMED, *(f"{prefix}:PATH" for prefix in _PREFIXED)]


def load_source(
    name: str,
    *,
    data_dir: Path | None = None,
    split: str = "train",
    n_samples: int | None = None,
    seed: int = 0,
) -> LoadedDataset:
    """Load a named source, optionally as a class-stratified subset.

    Parameters
    ----------
    name : str
        One of :func:`source_names`, or a path to a dataset file.
    data_dir : Path, optional
        Extra place to look for installed sets (``<data_dir>/fashion-mnist``).
    split : {"train", "test"}
    n_samples : int, optional
        Keep a class-stratified random subset of this size (seeded).
    seed : int

    Raises
    ------
    DatasetUnavailable
        The source is not installed; the message says how to install it.
    ValueError
        Unknown name or split (:class:`DatasetFormatError` for invalid files).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = _dispatch(name, data_dir, split)
    if n_samples is not None and n_samples < data.n_samples:
        data = data.take(stratified_subset(data.labels, n_samples, seed))
    return data


def _dispatch(name: str, data_dir: Path | None, split: str) -> LoadedDataset:
    if name in _NAMED:
        return _NAMED[name](data_dir, split)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIXED:
        return _PREFIXED[prefix](Path(rest).expanduser(), split)
    path = Path(name).expanduser()
    if path.is_file():
        return _train_only(read_dataset(path), split, name)
    raise ValueError(f"unknown data source {name!r}; known: {', '.join(source_names())}")


def stratified_subset(labels: ArrayLike, n: int, seed: int) -> NDArray[np.int64]:
    """Sorted indices of a random subset of size ``n`` with class proportions kept.

    Per-class quotas follow the largest-remainder rule; within a class the
    samples are drawn uniformly at random (``seed``). ``n >= N`` keeps all.
    """
    y = np.asarray(labels).reshape(-1)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if n >= y.size:
        return np.arange(y.size, dtype=np.int64)
    _, cls, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = class_quotas(counts, n)
    perm = np.random.default_rng(seed).permutation(y.size)
    order = perm[np.argsort(cls[perm], kind="stable")]  # grouped by class, random within
    starts = np.cumsum(counts) - counts
    rank = np.arange(y.size) - starts[cls[order]]
    chosen: NDArray[np.int64] = np.sort(order[rank < quota[cls[order]]]).astype(np.int64)
    return chosen


def split_reserve(
    labels: ArrayLike, n_reserve: int, seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Split indices into ``(inspected, reserve)``: disjoint, class-stratified, sorted."""
    y = np.asarray(labels).reshape(-1)
    if not 0 < n_reserve < y.size:
        raise ValueError(f"n_reserve must lie in (0, {y.size}), got {n_reserve}")
    reserve = stratified_subset(y, n_reserve, seed)
    keep = np.ones(y.size, dtype=bool)
    keep[reserve] = False
    return np.flatnonzero(keep).astype(np.int64), reserve


def class_quotas(counts: NDArray[np.int64], size: int) -> NDArray[np.int64]:
    """Split ``size`` over classes in proportion to ``counts`` (largest remainder).

    No class gets more than it has; ``size`` above the total yields ``counts``.
    """
    exact = counts * (size / max(1, int(counts.sum())))
    quota: NDArray[np.int64] = np.floor(exact).astype(np.int64)
    rest = min(size, int(counts.sum())) - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[: max(0, rest)]] += 1
    out: NDArray[np.int64] = np.minimum(quota, counts)
    return out


# --------------------------------------------------------------------------- sources


def _digits(scale: int, name: str) -> Loader:
    def load(data_dir: Path | None, split: str) -> LoadedDataset:
        del data_dir
        from sklearn.datasets import load_digits

        raw = load_digits()
        images = np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)
        x = images.repeat(scale, axis=1).repeat(scale, axis=2)[..., None]
        data = LoadedDataset(x, raw.target.astype(np.int64), 10, name, [str(d) for d in range(10)])
        return _train_only(data, split, name)

    return load


def _train_only(data: LoadedDataset, split: str, name: str) -> LoadedDataset:
    if split != "train":
        raise ValueError(f"{name} has only a 'train' split; use split_reserve for held-out data")
    return data


def _fashion(data_dir: Path | None, split: str) -> LoadedDataset:
    x, y = _fashion_arrays(_fashion_dir(data_dir), split)
    return LoadedDataset(x[..., None].copy(), y.copy(), 10, "fashion-mnist", FASHION_CLASSES)


def _fashion_32x3(data_dir: Path | None, split: str) -> LoadedDataset:
    x, y = _fashion_arrays(_fashion_dir(data_dir), split)
    padded = np.zeros((x.shape[0], 32, 32, 3), dtype=np.uint8)
    padded[:, 2:30, 2:30, :] = x[..., None]
    return LoadedDataset(padded, y.copy(), 10, "fashion-mnist-32x3", FASHION_CLASSES)


def _fashion_dir(data_dir: Path | None) -> Path:
    candidates = [SYSTEM_DATA_DIR / "fashion-mnist"]
    if data_dir is not None:
        candidates.insert(0, Path(data_dir) / "fashion-mnist")
    for cand in candidates:
        if (cand / "train-images-idx3-ubyte.gz").is_file():
            return cand
    raise DatasetUnavailable(
        f"Fashion-MNIST is not installed (looked in {', '.join(map(str, candidates))}). "
        f"Install it with `{FASHION_INSTALL}` (Debian/Ubuntu, ~31 MB), or put "
        "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz in <data_dir>/fashion-mnist."
    )


@functools.lru_cache(maxsize=4)
def _fashion_arrays(root: Path, split: str) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Cached read-only arrays; callers copy before handing them out."""
    prefix = _FASHION_FILES[split]
    x = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz", 2051, 3)
    y = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 2049, 1).astype(np.int64)
    if x.shape[0] != y.shape[0]:
        raise DatasetFormatError(f"{root}: {x.shape[0]} images but {y.shape[0]} labels")
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _read_idx(path: Path, magic: int, ndim: int) -> NDArray[np.uint8]:
    """Read a gzip IDX file: big-endian magic, ``ndim`` uint32 dims, then uint8 data."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    dims = tuple(int(d) for d in header[1:])
    if int(header[0]) != magic or data.size != int(np.prod(dims)):
        raise DatasetFormatError(f"{path.name}: not an IDX file of {ndim} dimensions")
    return data.reshape(dims)


def _cifar10(path: Path, split: str) -> LoadedDataset:
    root = _cifar_root(path)
    files = (
        [root / f"data_batch_{i}.bin" for i in range(1, 6)]
        if split == "train"
        else [root / "test_batch.bin"]
    )
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DatasetUnavailable(f"CIFAR-10 binary files missing in {root}: {', '.join(missing)}")
    records = np.concatenate([_cifar_records(f) for f in files])
    x = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= 10:
        raise DatasetFormatError("CIFAR-10 labels must lie in [0, 10)")
    return LoadedDataset(np.ascontiguousarray(x), labels, 10, "cifar10", _cifar_names(root))


def _cifar_root(path: Path) -> Path:
    for root in (path, path / "cifar-10-batches-bin"):
        if (root / "data_batch_1.bin").is_file() or (root / "test_batch.bin").is_file():
            return root
    for root in (path, path / "cifar-10-batches-py"):
        if (root / "data_batch_1").is_file():
            raise DatasetFormatError(
                "this is CIFAR-10's python (pickled) version, which is never loaded; "
                "use the binary version (cifar-10-binary.tar.gz, data_batch_*.bin)"
            )
    raise DatasetUnavailable(
        f"no CIFAR-10 binary version at {path}: expected data_batch_1.bin ... test_batch.bin "
        "(from cifar-10-binary.tar.gz) in that directory or its cifar-10-batches-bin/"
    )


def _cifar_records(path: Path) -> NDArray[np.uint8]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise DatasetFormatError(f"{path.name}: size is not a multiple of {_CIFAR_RECORD} bytes")
    return raw.reshape(-1, _CIFAR_RECORD)


def _cifar_names(root: Path) -> list[str] | None:
    meta = root / "batches.meta.txt"
    if not meta.is_file():
        return None
    names = [line.strip() for line in meta.read_text().splitlines() if line.strip()]
    return names if len(names) == 10 else None


def _reader(fmt: str) -> Callable[[Path, str], LoadedDataset]:
    def load(path: Path, split: str) -> LoadedDataset:
        return _train_only(read_dataset(path, fmt), split, f"{fmt}:{path.name}")

    return load


_NAMED: dict[str, Loader] = {
    "digits": _digits(2, "digits"),
    "digits32": _digits(4, "digits32"),
    "fashion-mnist": _fashion,
    "fashion-mnist-32x3": _fashion_32x3,
}
_PREFIXED: dict[str, Callable[[Path, str], LoadedDataset]] = {
    "cifar10": _cifar10,
    **{fmt: _reader(fmt) for fmt in FORMATS},
}
