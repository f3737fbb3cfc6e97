"""Validated dataset readers: npz, ImageFolder zip/tar, parquet and csv.

Nothing is ever unpickled. Every reader checks declared sizes and member counts
before it allocates, counts bytes while it decompresses, and raises
:class:`DatasetFormatError` with a message fit for an HTTP 4xx body.

Formats
-------
``npz``
    Arrays ``x`` and ``y`` (or ``labels``); optional ``n_classes`` (integer
    scalar) and ``class_names`` (1-D unicode array). ``x`` is uint8 images
    ``(N, H, W, C)`` with ``1 <= C <= 4``, or ``(N, H, W)`` grayscale (a channel
    axis is added), or features ``(N, D)``. Integer images whose values lie in
    ``[0, 255]`` are cast to uint8; float images are refused (their scale is
    ambiguous). Integer, bool or float features are cast to float32 and must be
    finite. Any other plain (numeric, bool or unicode) array is returned in
    :attr:`LoadedDataset.extra`, e.g. ``poison_indices``.
``zip`` / ``tar``
    ImageFolder layout ``<root?>/<class_name>/<image>.png|jpg|jpeg|bmp``; class
    order = sorted class names. Grayscale images stay 1-channel, colour images
    become RGB; all images must share one size and channel count. Hidden files,
    ``__MACOSX`` and non-image files are skipped (but count toward the limits).
``parquet`` / ``csv``
    Numeric feature columns plus a label column ``label`` (or ``y``). String
    labels map to ``0..C-1`` in sorted order and set ``class_names``.

``n_classes`` is ``max(label) + 1`` unless declared.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import math
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

GiB = 1 << 30
MiB = 1 << 20
FORMATS = ("npz", "zip", "tar", "parquet", "csv")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
_PLAIN_KINDS = "biufU"
_CHUNK = 16 * MiB
_TAR_OVERHEAD = 2048  # bytes of headers and padding allowed per tar member
_IO_ERRORS: tuple[type[BaseException], ...] = (
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
    """

    x: NDArray[Any]
    labels: NDArray[np.int64]
    n_classes: int
    format: str
    class_names: list[str] | None = None
    extra: dict[str, NDArray[Any]] = field(default_factory=dict, compare=False)

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
        return LoadedDataset(
            self.x[indices], self.labels[indices], self.n_classes, self.format, self.class_names
        )


# --------------------------------------------------------------------------- entry points


def read_dataset(
    path: Path, fmt: str | None = None, limits: ReaderLimits = ReaderLimits()
) -> LoadedDataset:
    """Read and validate a dataset file.

    Parameters
    ----------
    path : Path
        The file.
    fmt : {"npz", "zip", "tar", "parquet", "csv"}, optional
        Format; sniffed from magic bytes and suffix when omitted.
    limits : ReaderLimits

    Raises
    ------
    DatasetFormatError
        Unknown format, unsafe archive, limits exceeded or invalid content.
    """
    path = Path(path)
    fmt = fmt or sniff_format(path)
    reader = _READERS.get(fmt)
    if reader is None:
        raise DatasetFormatError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return reader(path, limits)


def sniff_format(path: Path) -> str:
    """Guess a file's format from its magic bytes, then its suffix."""
    path = Path(path)
    with _translated("dataset"), path.open("rb") as fh:
        head = fh.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _zip_kind(path)
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "tar"
    if head[257:262] == b"ustar":
        return "tar"
    if head[:6] == b"\x93NUMPY":
        raise DatasetFormatError("a bare .npy file holds one array; save x and y in one .npz")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise DatasetFormatError("pickle files are never loaded; convert the data to .npz")
    return _format_from_suffix(path)


def write_npz(path: Path, x: ArrayLike, labels: ArrayLike, **extra: ArrayLike) -> None:
    """Write ``x``, ``labels`` (as ``y``) and extra arrays to a compressed npz readable here."""
    arrays = {"x": np.asarray(x), "y": np.asarray(labels)}
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    for name, arr in arrays.items():
        if arr.dtype.hasobject:
            raise DatasetFormatError(f"array {name!r} has dtype object; it cannot be saved safely")
    with Path(path).open("wb") as fh:  # a file object keeps numpy from appending ".npz"
        np.savez_compressed(fh, allow_pickle=False, **arrays)


def _format_from_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    last = suffixes[-1] if suffixes else ""
    if last in (".pkl", ".pickle", ".pt", ".pth", ".joblib"):
        raise DatasetFormatError("pickle files are never loaded; convert the data to .npz")
    by_suffix = {
        ".npz": "npz",
        ".zip": "zip",
        ".tar": "tar",
        ".tgz": "tar",
        ".parquet": "parquet",
        ".pq": "parquet",
        ".csv": "csv",
    }
    if last in by_suffix:
        return by_suffix[last]
    raise DatasetFormatError(
        f"cannot tell the format of {path.name!r}; expected one of {', '.join(FORMATS)}"
    )


def _zip_kind(path: Path) -> str:
    with _translated("zip"), zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"


@contextmanager
def _translated(kind: str) -> Iterator[None]:
    """Turn library errors raised while parsing into :class:`DatasetFormatError`."""
    try:
        yield
    except DatasetFormatError:
        raise
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{kind} file not found") from err
    except _IO_ERRORS as err:
        raise DatasetFormatError(f"corrupt or truncated {kind} file: {err}") from err


# --------------------------------------------------------------------------- validation


def _finish(
    x: NDArray[Any],
    labels: NDArray[np.int64],
    fmt: str,
    limits: ReaderLimits,
    n_classes: int | None = None,
    class_names: list[str] | None = None,
    extra: dict[str, NDArray[Any]] | None = None,
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
    return LoadedDataset(x, labels, n_classes, fmt, class_names, extra or {})


def _images_or_features(x: NDArray[Any]) -> NDArray[Any]:
    """Normalise ``x`` to uint8 NHWC images or finite float32 NxD features."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim == 4:
        return _as_images(x)
    if x.ndim == 2:
        return _as_features(x)
    raise DatasetFormatError(
        f"x must be NxHxWxC or NxHxW images or NxD features, got shape {x.shape}"
    )


def _as_images(x: NDArray[Any]) -> NDArray[np.uint8]:
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


def _as_features(x: NDArray[Any]) -> NDArray[np.float32]:
    if x.dtype.kind not in "biuf":
        raise DatasetFormatError(f"features must be numeric, got {x.dtype}")
    if x.shape[1] < 1:
        raise DatasetFormatError("features must have at least one column")
    out = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(out).all():
        raise DatasetFormatError("features contain NaN or inf (or values beyond float32 range)")
    return out


def _int_labels(y: NDArray[Any]) -> NDArray[np.int64]:
    if y.ndim != 1:
        raise DatasetFormatError(f"labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DatasetFormatError(f"labels must be integers, got {y.dtype}")
    if y.dtype.kind == "u" and y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise DatasetFormatError("labels are out of range")
    return y.astype(np.int64)


def _safe_parts(name: str) -> tuple[str, ...]:
    """Split an archive member name, refusing absolute paths and ``..`` traversal."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or "\x00" in norm:
        raise DatasetFormatError(f"archive member {name!r} has an absolute path")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise DatasetFormatError(f"archive member {name!r} escapes the archive (..)")
    return parts


def _check_total(total: int, limits: ReaderLimits, compressed: int) -> None:
    if total > limits.max_bytes:
        raise DatasetFormatError(f"uncompressed size exceeds the limit of {limits.max_bytes} bytes")
    _check_ratio(total, limits, compressed)


def _check_ratio(total: int, limits: ReaderLimits, compressed: int) -> None:
    if total > limits.ratio_floor_bytes and total > limits.max_ratio * max(compressed, 1):
        raise DatasetFormatError(
            f"compression ratio above {limits.max_ratio:g}:1; refusing a likely archive bomb"
        )


# --------------------------------------------------------------------------- npz


def _read_npz(path: Path, limits: ReaderLimits) -> LoadedDataset:
    with _translated("npz"), zipfile.ZipFile(path) as zf:
        infos = _checked_zip_infos(zf, path, limits, member_cap=limits.max_bytes)
        arrays: dict[str, NDArray[Any]] = {}
        total = 0
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise DatasetFormatError(f"npz member {info.filename!r} is not an .npy array")
            arrays[info.filename[:-4]] = _read_npy(zf, info, limits.max_bytes - total)
            total += arrays[info.filename[:-4]].nbytes
    return _from_arrays(arrays, limits)


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> NDArray[Any]:
    """Read one .npy member after checking its header: no objects, sizes consistent."""
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise DatasetFormatError(f"{info.filename}: unsupported .npy version {version}")
        name = info.filename
        if dtype.hasobject or dtype.kind not in _PLAIN_KINDS or dtype.fields is not None:
            raise DatasetFormatError(f"{name}: dtype {dtype} refused (only plain numeric arrays)")
        nbytes = math.prod(shape) * dtype.itemsize
        if any(s < 0 for s in shape) or nbytes > budget:
            raise DatasetFormatError(f"{name}: array of shape {shape} exceeds the size limit")
        if fh.tell() + nbytes != info.file_size:
            raise DatasetFormatError(f"{name}: size does not match its header (truncated?)")
        buf = _read_exact(fh, nbytes, name)
    return buf.view(dtype).reshape(shape, order="F" if fortran else "C")


def _read_exact(fh: IO[bytes], nbytes: int, name: str) -> NDArray[np.uint8]:
    out = np.empty(nbytes, dtype=np.uint8)
    pos = 0
    while pos < nbytes:
        chunk = fh.read(min(_CHUNK, nbytes - pos))
        if not chunk:
            raise DatasetFormatError(f"{name}: truncated")
        out[pos : pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        pos += len(chunk)
    return out


def _from_arrays(arrays: dict[str, NDArray[Any]], limits: ReaderLimits) -> LoadedDataset:
    if "x" not in arrays:
        raise DatasetFormatError(f"npz needs an array named 'x'; found {sorted(arrays)}")
    label_key = "y" if "y" in arrays else "labels"
    if label_key not in arrays:
        raise DatasetFormatError("npz needs labels in an array named 'y' (or 'labels')")
    x = _images_or_features(arrays.pop("x"))
    labels = _int_labels(arrays.pop(label_key))
    n_classes = _scalar_int(arrays.pop("n_classes")) if "n_classes" in arrays else None
    names = arrays.pop("class_names", None)
    if names is not None and (names.dtype.kind != "U" or names.ndim != 1):
        raise DatasetFormatError("class_names must be a 1-D array of strings")
    class_names = None if names is None else [str(s) for s in names]
    return _finish(x, labels, "npz", limits, n_classes, class_names, arrays)


def _scalar_int(arr: NDArray[Any]) -> int:
    if arr.size != 1 or arr.dtype.kind not in "iu":
        raise DatasetFormatError("n_classes must be one integer")
    return int(arr.reshape(-1)[0])


# --------------------------------------------------------------------------- archives


def _checked_zip_infos(
    zf: zipfile.ZipFile, path: Path, limits: ReaderLimits, member_cap: int
) -> list[zipfile.ZipInfo]:
    """Validate every zip header before anything is decompressed."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise DatasetFormatError(f"archive has more than {limits.max_members} members")
    for info in infos:
        _safe_parts(info.filename)
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
    _check_total(sum(i.file_size for i in files), limits, archive_size)
    return files


def _is_image_member(parts: tuple[str, ...]) -> bool:
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES


Entry = tuple[tuple[str, ...], bytes]


def _read_zip_images(path: Path, limits: ReaderLimits) -> LoadedDataset:
    entries: list[Entry] = []
    with _translated("zip"), zipfile.ZipFile(path) as zf:
        for info in _checked_zip_infos(zf, path, limits, limits.max_member_bytes):
            parts = _safe_parts(info.filename)
            if _is_image_member(parts):
                with zf.open(info) as fh:
                    data = fh.read(info.file_size + 1)  # zipfile stops at the declared size
                if len(data) != info.file_size:
                    raise DatasetFormatError(f"{info.filename}: size differs from its header")
                entries.append((parts, data))
    return _image_folder(entries, "zip", limits)


class _CappedReader(io.RawIOBase):
    """Counts bytes read from a (decompressing) stream and stops past ``cap``."""

    def __init__(self, raw: IO[bytes], cap: int) -> None:
        self.raw, self.cap, self.count = raw, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.raw.read(len(view))
        self.count += len(data)
        if self.count > self.cap:
            raise DatasetFormatError("uncompressed size exceeds the limit; refusing the archive")
        view[: len(data)] = data
        return len(data)


def _open_decompressed(path: Path) -> IO[bytes]:
    with path.open("rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(path, "rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(path, "rb")
    return path.open("rb")


def _read_tar_images(path: Path, limits: ReaderLimits) -> LoadedDataset:
    entries: list[Entry] = []
    compressed = path.stat().st_size
    cap = limits.max_bytes + _TAR_OVERHEAD * (limits.max_members + 2)
    with _translated("tar"), _open_decompressed(path) as raw:
        reader = _CappedReader(raw, cap)
        total = 0
        with tarfile.open(fileobj=reader, mode="r|") as tf:
            for n_members, member in enumerate(tf, start=1):
                if n_members > limits.max_members:
                    raise DatasetFormatError(f"archive has more than {limits.max_members} members")
                parts = _safe_parts(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise DatasetFormatError(
                        f"archive member {member.name!r} is a link or special file; refused"
                    )
                if member.size > limits.max_member_bytes:
                    raise DatasetFormatError(
                        f"archive member {member.name!r} is too large ({member.size} bytes)"
                    )
                total += member.size
                _check_total(total, limits, compressed)
                if _is_image_member(parts):
                    entries.append((parts, _read_tar_member(tf, member)))
                _check_ratio(reader.count, limits, compressed)
    return _image_folder(entries, "tar", limits)


def _read_tar_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tf.extractfile(member)
    data = b"" if fh is None else fh.read(member.size + 1)
    if len(data) != member.size:
        raise DatasetFormatError(f"{member.name}: truncated")
    return data


def _image_folder(entries: list[Entry], fmt: str, limits: ReaderLimits) -> LoadedDataset:
    """Decode ``<root?>/<class>/<file>`` entries into uint8 NHWC images and labels."""
    if not entries:
        raise DatasetFormatError("no .png/.jpg/.jpeg/.bmp images found in the archive")
    roots = {parts[:-2] for parts, _ in entries if len(parts) >= 2}
    if len(roots) != 1 or any(len(parts) < 2 for parts, _ in entries):
        raise DatasetFormatError(
            "expected ImageFolder layout <root>/<class_name>/<image> at one common depth"
        )
    class_names = sorted({parts[-2] for parts, _ in entries})
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[parts[-2]] for parts, _ in entries], dtype=np.int64)
    first = _decode("/".join(entries[0][0]), entries[0][1], limits)
    if len(entries) * first.size > limits.max_bytes:
        raise DatasetFormatError("decoded images exceed the size limit")
    x = np.empty((len(entries), *first.shape), dtype=np.uint8)
    x[0] = first
    for i, (parts, data) in enumerate(entries[1:], start=1):
        img = _decode("/".join(parts), data, limits)
        if img.shape != first.shape:
            raise DatasetFormatError(
                f"{'/'.join(parts)}: image shape {img.shape} differs from {first.shape} (H, W, C)"
            )
        x[i] = img
    return _finish(x, labels, fmt, limits, len(class_names), class_names)


def _decode(name: str, data: bytes, limits: ReaderLimits) -> NDArray[np.uint8]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "BMP"]) as img:
            if img.width * img.height > limits.max_member_bytes:
                raise DatasetFormatError(f"{name}: image dimensions are too large")
            gray = img.mode in ("1", "L", "LA", "I", "I;16", "F")
            arr = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.uint8)
    except DatasetFormatError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetFormatError(f"{name}: not a readable image ({err})") from err
    return arr[:, :, None] if arr.ndim == 2 else arr


# --------------------------------------------------------------------------- tables


def _read_parquet(path: Path, limits: ReaderLimits) -> LoadedDataset:
    import pyarrow.parquet as pq

    with _translated("parquet"):
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        if meta.num_rows > limits.max_samples:
            raise DatasetFormatError(f"{meta.num_rows} rows exceed {limits.max_samples}")
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if size > limits.max_bytes:
            raise DatasetFormatError("parquet data exceeds the size limit")
        table = pf.read()
    return _from_table(table, "parquet", limits)


def _read_csv(path: Path, limits: ReaderLimits) -> LoadedDataset:
    import pyarrow.csv as pcsv

    if path.stat().st_size > limits.max_bytes:
        raise DatasetFormatError("csv file exceeds the size limit")
    with _translated("csv"):
        table = pcsv.read_csv(path)
    return _from_table(table, "csv", limits)


def _from_table(table: Any, fmt: str, limits: ReaderLimits) -> LoadedDataset:
    import pyarrow as pa

    names = list(table.column_names)
    label_col = next((c for c in ("label", "y") if c in names), None)
    if label_col is None:
        raise DatasetFormatError(f"no label column ('label' or 'y') among columns {names}")
    features = [c for c in names if c != label_col]
    if not features:
        raise DatasetFormatError("no feature columns besides the label column")
    for col in [*features, label_col]:
        if table.column(col).null_count:
            raise DatasetFormatError(f"column {col!r} has missing values")
    for col in features:
        kind = table.column(col).type
        if not (
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        ):
            raise DatasetFormatError(f"feature column {col!r} is not numeric ({kind})")
    x = np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in features])
    labels, class_names = _table_labels(table.column(label_col), pa)
    n_classes = None if class_names is None else len(class_names)
    return _finish(_as_features(x), labels, fmt, limits, n_classes, class_names)


def _table_labels(column: Any, pa: Any) -> tuple[NDArray[np.int64], list[str] | None]:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        names, labels = np.unique(np.asarray(column.to_pylist(), dtype=str), return_inverse=True)
        return labels.astype(np.int64), [str(s) for s in names]
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _int_labels(column.to_numpy()), None
    raise DatasetFormatError(f"label column has unsupported type {kind}")


_READERS: dict[str, Callable[[Path, ReaderLimits], LoadedDataset]] = {
    "npz": _read_npz,
    "zip": _read_zip_images,
    "tar": _read_tar_images,
    "parquet": _read_parquet,
    "csv": _read_csv,
}
