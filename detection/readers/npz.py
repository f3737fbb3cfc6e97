"""``npz``: arrays ``x`` and ``y`` (or ``labels``), read without ever unpickling."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from detection.readers.base import (
    DatasetFormatError,
    LoadedDataset,
    MiB,
    ReaderLimits,
    checked_zip_infos,
    finish,
    images_or_features,
    int_labels,
    is_zip,
    register_format,
    translated,
    zip_holds_only_npy,
)

_PLAIN_KINDS = "biufU"
_CHUNK = 16 * MiB


def is_npz(head: bytes, path: Path) -> bool:
    return is_zip(head) and zip_holds_only_npy(path)


@register_format(
    "npz",
    suffixes=(".npz",),
    sniff=is_npz,
    description="arrays x (images or features) and y; optional n_classes, class_names",
)
def _read_npz(path: Path, limits: ReaderLimits) -> LoadedDataset:
    with translated("npz"), zipfile.ZipFile(path) as zf:
        infos = checked_zip_infos(zf, path, limits, member_cap=limits.max_bytes)
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
    x = images_or_features(arrays.pop("x"))
    labels = int_labels(arrays.pop(label_key))
    n_classes = _scalar_int(arrays.pop("n_classes")) if "n_classes" in arrays else None
    names = arrays.pop("class_names", None)
    if names is not None and (names.dtype.kind != "U" or names.ndim != 1):
        raise DatasetFormatError("class_names must be a 1-D array of strings")
    class_names = None if names is None else [str(s) for s in names]
    return finish(x, labels, "npz", limits, n_classes, class_names, arrays)


def _scalar_int(arr: NDArray[Any]) -> int:
    if arr.size != 1 or arr.dtype.kind not in "iu":
        raise DatasetFormatError("n_classes must be one integer")
    return int(arr.reshape(-1)[0])


def write_npz(path: Path, x: ArrayLike, labels: ArrayLike, **extra: ArrayLike) -> None:
    """Write ``x``, ``labels`` (as ``y``) and extra arrays to a compressed npz readable here."""
    arrays = {"x": np.asarray(x), "y": np.asarray(labels)}
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    for name, arr in arrays.items():
        if arr.dtype.hasobject:
            raise DatasetFormatError(f"array {name!r} has dtype object; it cannot be saved safely")
    with Path(path).open("wb") as fh:  # a file object keeps numpy from appending ".npz"
        np.savez_compressed(fh, allow_pickle=False, **arrays)
