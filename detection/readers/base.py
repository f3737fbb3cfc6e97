"""The dataset-format registry, the validated result type and the shared safety checks.

A format is a reader function registered by name with the suffixes and the
magic-byte test that recognise its files::

    @register_format("npz", suffixes=(".npz",), sniff=is_npz, description="...")
    def read_npz(path: Path, limits: ReaderLimits) -> LoadedDataset: ...

Readers never unpickle, check declared sizes and member counts before they
allocate, and finish through :func:`finish`, which validates labels, classes
and limits the same way for every format.
"""

from __future__ import annotations

import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

GiB = 1 << 30
MiB = 1 << 20
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
IO_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    ValueError,
    TypeError,
    KeyError,
)


class DatasetFormatError(ValueError):
    """An uploaded or named dataset that cannot be read safely or is invalid."""


@dataclass(frozen=True)
class ReaderLimits:
    """Resource limits applied while reading untrusted files.

    ``max_bytes`` bounds the total uncompressed size (archive members and
    decoded arrays); ``max_member_bytes`` bounds one image file of an archive;
    ``max_ratio`` bounds uncompressed / compressed size once the uncompressed
    total exceeds ``ratio_floor_bytes`` (small archives cannot bomb).
    """

    max_bytes: int = 2 * GiB
    max_members: int = 200_000
    max_samples: int = 2_000_000
    max_member_bytes: int = 64 * MiB
    max_classes: int = 100_000
    max_ratio: float = 250.0
    ratio_floor_bytes: int = 16 * MiB


@dataclass(frozen=True)
class LoadedDataset:
    """A validated dataset.

    Attributes
    ----------
    x : ndarray
        uint8 images ``(N, H, W, C)`` or float32 features ``(N, D)``.
    labels : ndarray, int64, shape (N,)
        Every label lies in ``[0, n_classes)``.
    n_classes : int
    format : str
        The reader or source that produced it (``"npz"``, ``"fashion-mnist"``...).
    class_names : list of str, optional
        ``class_names[c]`` names class ``c``.
    extra : dict of ndarray
        Other arrays stored next to ``x`` and ``y`` in an npz file.
    sources : list of str, optional
        ``sources[i]`` names where sample ``i`` came from (its path inside an
        archive); None when samples are rows, identified by their index.
    """

    x: NDArray[Any]
    labels: NDArray[np.int64]
    n_classes: int
    format: str
    class_names: list[str] | None = None
    extra: dict[str, NDArray[Any]] = field(default_factory=dict, compare=False)
    sources: list[str] | None = field(default=None, compare=False)

    @property
    def n_samples(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    def class_counts(self) -> list[int]:
        """Number of samples per class, length ``n_classes``."""
        return [int(c) for c in np.bincount(self.labels, minlength=self.n_classes)]

    def take(self, indices: NDArray[np.int64]) -> LoadedDataset:
        """The samples at ``indices`` (``extra`` is dropped: it indexes the full set)."""
        sources = None if self.sources is None else [self.sources[int(i)] for i in indices]
        return LoadedDataset(
            self.x[indices],
            self.labels[indices],
            self.n_classes,
            self.format,
            self.class_names,
            sources=sources,
        )


DEFAULT_LIMITS = ReaderLimits()

# --------------------------------------------------------------------------- registry

Reader = Callable[[Path, ReaderLimits], LoadedDataset]
Sniffer = Callable[[bytes, Path], bool]


@dataclass(frozen=True)
class DatasetFormat:
    """A registered format.

    Attributes
    ----------
    name : str
        Stored on the dataset row and accepted as ``fmt`` by ``read_dataset``.
    read : callable ``(path, limits) -> LoadedDataset``
    suffixes : tuple of str
        Lower-case file suffixes (``".npz"``) that name the format when no magic matches.
    sniff : callable ``(head, path) -> bool``, optional
        True when the first 512 bytes ``head`` (and the file) are this format.
    description : str
    """

    name: str
    read: Reader
    suffixes: tuple[str, ...]
    sniff: Sniffer | None
    description: str


class FormatRegistry:
    """Name -> :class:`DatasetFormat`; iterating yields the sorted names.

    Magic-byte tests and suffixes of different formats must not overlap, so the
    answer of :meth:`by_magic` / :meth:`by_suffix` does not depend on import order.
    """

    def __init__(self) -> None:
        self._formats: dict[str, DatasetFormat] = {}

    def register(
        self,
        name: str,
        *,
        suffixes: tuple[str, ...],
        sniff: Sniffer | None = None,
        description: str = "",
    ) -> Callable[[Reader], Reader]:
        def decorate(read: Reader) -> Reader:
            if name in self._formats:
                raise ValueError(f"dataset format {name!r} is already registered")
            self._formats[name] = DatasetFormat(name, read, suffixes, sniff, description)
            return read

        return decorate

    def get(self, name: str) -> DatasetFormat:
        if name not in self._formats:
            raise DatasetFormatError(f"unknown format {name!r}; expected one of {self.listing()}")
        return self._formats[name]

    def names(self) -> list[str]:
        return sorted(self._formats)

    def listing(self) -> str:
        return ", ".join(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._formats

    def by_magic(self, head: bytes, path: Path) -> str | None:
        """The first format whose magic-byte test accepts the file."""
        for fmt in self._formats.values():
            if fmt.sniff is not None and fmt.sniff(head, path):
                return fmt.name
        return None

    def by_suffix(self, suffix: str) -> str | None:
        return next((f.name for f in self._formats.values() if suffix in f.suffixes), None)


FORMATS = FormatRegistry()
register_format = FORMATS.register


# --------------------------------------------------------------------------- shared checks


@contextmanager
def translated(kind: str) -> Iterator[None]:
    """Turn library errors raised while parsing into :class:`DatasetFormatError`."""
    try:
        yield
    except DatasetFormatError:
        raise
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{kind} file not found") from err
    except IO_ERRORS as err:
        raise DatasetFormatError(f"corrupt or truncated {kind} file: {err}") from err


def is_zip(head: bytes) -> bool:
    return head[:4] in ZIP_MAGIC


def zip_holds_only_npy(path: Path) -> bool:
    """An npz is a zip whose members are all ``.npy`` arrays."""
    with translated("zip"), zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    return bool(names) and all(n.endswith(".npy") for n in names)


def finish(
    x: NDArray[Any],
    labels: NDArray[np.int64],
    fmt: str,
    limits: ReaderLimits,
    n_classes: int | None = None,
    class_names: list[str] | None = None,
    extra: dict[str, NDArray[Any]] | None = None,
    sources: list[str] | None = None,
) -> LoadedDataset:
    n = int(x.shape[0])
    if n == 0:
        raise DatasetFormatError("the dataset is empty")
    if n > limits.max_samples:
        raise DatasetFormatError(f"{n} samples exceed the limit of {limits.max_samples}")
    if labels.shape != (n,):
        raise DatasetFormatError(f"x has {n} samples but labels have shape {labels.shape}")
    if int(labels.min()) < 0:
        raise DatasetFormatError("labels must be non-negative integers")
    observed = int(labels.max()) + 1
    n_classes = observed if n_classes is None else n_classes
    if observed > n_classes:
        raise DatasetFormatError(f"label {observed - 1} is out of range for n_classes={n_classes}")
    if not 2 <= n_classes <= limits.max_classes:
        raise DatasetFormatError(
            f"n_classes must lie in [2, {limits.max_classes}], got {n_classes}"
        )
    if class_names is not None and len(class_names) != n_classes:
        raise DatasetFormatError(f"{len(class_names)} class names for {n_classes} classes")
    if sources is not None and len(sources) != n:
        raise DatasetFormatError(f"{len(sources)} sample sources for {n} samples")
    return LoadedDataset(x, labels, n_classes, fmt, class_names, extra or {}, sources)


def images_or_features(x: NDArray[Any]) -> NDArray[Any]:
    """Normalise ``x`` to uint8 NHWC images or finite float32 NxD features."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim == 4:
        return as_images(x)
    if x.ndim == 2:
        return as_features(x)
    raise DatasetFormatError(
        f"x must be NxHxWxC or NxHxW images or NxD features, got shape {x.shape}"
    )


def as_images(x: NDArray[Any]) -> NDArray[np.uint8]:
    if not 1 <= x.shape[3] <= 4 or min(x.shape[1:3]) < 1:
        raise DatasetFormatError(f"images must be NxHxWxC with 1 to 4 channels, got {x.shape}")
    if x.dtype.kind in "iu" and x.size and (int(x.min()) < 0 or int(x.max()) > 255):
        raise DatasetFormatError("integer images must hold values in [0, 255]")
    if x.dtype.kind not in "iu":
        raise DatasetFormatError(
            f"images must be uint8 in [0, 255], got {x.dtype}; "
            "convert with (x * 255).round().astype(np.uint8)"
        )
    return np.ascontiguousarray(x, dtype=np.uint8)


def as_features(x: NDArray[Any]) -> NDArray[np.float32]:
    if x.dtype.kind not in "biuf":
        raise DatasetFormatError(f"features must be numeric, got {x.dtype}")
    if x.shape[1] < 1:
        raise DatasetFormatError("features must have at least one column")
    out = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(out).all():
        raise DatasetFormatError("features contain NaN or inf (or values beyond float32 range)")
    return out


def int_labels(y: NDArray[Any]) -> NDArray[np.int64]:
    if y.ndim != 1:
        raise DatasetFormatError(f"labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DatasetFormatError(f"labels must be integers, got {y.dtype}")
    if y.dtype.kind == "u" and y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise DatasetFormatError("labels are out of range")
    return y.astype(np.int64)


def safe_parts(name: str) -> tuple[str, ...]:
    """Split an archive member name, refusing absolute paths and ``..`` traversal."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or "\x00" in norm:
        raise DatasetFormatError(f"archive member {name!r} has an absolute path")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise DatasetFormatError(f"archive member {name!r} escapes the archive (..)")
    return parts


def check_total(total: int, limits: ReaderLimits, compressed: int) -> None:
    if total > limits.max_bytes:
        raise DatasetFormatError(f"uncompressed size exceeds the limit of {limits.max_bytes} bytes")
    check_ratio(total, limits, compressed)


def check_ratio(total: int, limits: ReaderLimits, compressed: int) -> None:
    if total > limits.ratio_floor_bytes and total > limits.max_ratio * max(compressed, 1):
        raise DatasetFormatError(
            f"compression ratio above {limits.max_ratio:g}:1; refusing a likely archive bomb"
        )


def checked_zip_infos(
    zf: zipfile.ZipFile, path: Path, limits: ReaderLimits, member_cap: int
) -> list[zipfile.ZipInfo]:
    """Validate every zip header before anything is decompressed."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise DatasetFormatError(f"archive has more than {limits.max_members} members")
    for info in infos:
        safe_parts(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetFormatError(f"archive member {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise DatasetFormatError(f"archive member {info.filename!r} is encrypted")
        if info.file_size > member_cap:
            raise DatasetFormatError(
                f"archive member {info.filename!r} is too large ({info.file_size} bytes)"
            )
    files = [i for i in infos if not i.is_dir()]
    archive_size = path.stat().st_size
    if sum(i.compress_size for i in files) > archive_size:
        raise DatasetFormatError("zip members overlap; refusing a likely archive bomb")
    check_total(sum(i.file_size for i in files), limits, archive_size)
    return files
