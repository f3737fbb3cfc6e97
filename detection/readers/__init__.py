"""Validated dataset readers, one registered format each: npz, ImageFolder zip/tar, parquet, csv.

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

A new format is a module here that registers its reader with
:func:`~detection.readers.base.register_format` (name, suffixes, magic-byte
test), imported below.
"""

from __future__ import annotations

from pathlib import Path

from detection.readers import archives, npz, tables
from detection.readers.base import (
    DEFAULT_LIMITS,
    FORMATS,
    DatasetFormat,
    DatasetFormatError,
    LoadedDataset,
    ReaderLimits,
    register_format,
    translated,
)
from detection.readers.npz import write_npz

__all__ = [
    "FORMATS",
    "DatasetFormat",
    "DatasetFormatError",
    "LoadedDataset",
    "ReaderLimits",
    "archives",
    "npz",
    "read_dataset",
    "register_format",
    "sniff_format",
    "tables",
    "write_npz",
]

PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".joblib")


def read_dataset(
    path: Path, fmt: str | None = None, limits: ReaderLimits = DEFAULT_LIMITS
) -> LoadedDataset:
    """Read and validate a dataset file.

    Parameters
    ----------
    path : Path
        The file.
    fmt : str, optional
        A registered format name (``FORMATS.names()``); sniffed from magic
        bytes and suffix when omitted.
    limits : ReaderLimits

    Raises
    ------
    DatasetFormatError
        Unknown format, unsafe archive, limits exceeded or invalid content.
    """
    path = Path(path)
    return FORMATS.get(fmt or sniff_format(path)).read(path, limits)


def sniff_format(path: Path) -> str:
    """Guess a file's format from its magic bytes, then its suffix; refuse pickles and .npy."""
    path = Path(path)
    with translated("dataset"), path.open("rb") as fh:
        head = fh.read(512)
    if head[:6] == b"\x93NUMPY":
        raise DatasetFormatError("a bare .npy file holds one array; save x and y in one .npz")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise DatasetFormatError("pickle files are never loaded; convert the data to .npz")
    return FORMATS.by_magic(head, path) or _format_from_suffix(path)


def _format_from_suffix(path: Path) -> str:
    last = path.suffix.lower()
    if last in PICKLE_SUFFIXES:
        raise DatasetFormatError("pickle files are never loaded; convert the data to .npz")
    fmt = FORMATS.by_suffix(last)
    if fmt is None:
        raise DatasetFormatError(
            f"cannot tell the format of {path.name!r}; expected one of {FORMATS.listing()}"
        )
    return fmt
