"""``zip`` and ``tar``: an ImageFolder ``<root?>/<class_name>/<image>`` inside an archive.

Every member name is checked for absolute paths and ``..``; links, special
files and encrypted members are refused; sizes are checked from the headers
before anything is decompressed, and counted again while decompressing.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from detection.readers.base import (
    DatasetFormatError,
    LoadedDataset,
    ReaderLimits,
    check_ratio,
    check_total,
    checked_zip_infos,
    finish,
    is_zip,
    register_format,
    safe_parts,
    translated,
    zip_holds_only_npy,
)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
_TAR_OVERHEAD = 2048  # bytes of headers and padding allowed per tar member


def is_image_zip(head: bytes, path: Path) -> bool:
    return is_zip(head) and not zip_holds_only_npy(path)


def is_tar(head: bytes, path: Path) -> bool:
    del path
    compressed = head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00"
    return compressed or head[257:262] == b"ustar"


def _is_image_member(parts: tuple[str, ...]) -> bool:
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES


Entry = tuple[tuple[str, ...], bytes]


@register_format(
    "zip", suffixes=(".zip",), sniff=is_image_zip, description="ImageFolder in a zip archive"
)
def _read_zip_images(path: Path, limits: ReaderLimits) -> LoadedDataset:
    entries: list[Entry] = []
    with translated("zip"), zipfile.ZipFile(path) as zf:
        for info in checked_zip_infos(zf, path, limits, limits.max_member_bytes):
            parts = safe_parts(info.filename)
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


@register_format(
    "tar",
    suffixes=(".tar", ".tgz"),
    sniff=is_tar,
    description="ImageFolder in a tar archive (plain, gzip, bzip2 or xz)",
)
def _read_tar_images(path: Path, limits: ReaderLimits) -> LoadedDataset:
    entries: list[Entry] = []
    compressed = path.stat().st_size
    cap = limits.max_bytes + _TAR_OVERHEAD * (limits.max_members + 2)
    with translated("tar"), _open_decompressed(path) as raw:
        reader = _CappedReader(raw, cap)
        total = 0
        with tarfile.open(fileobj=reader, mode="r|") as tf:
            for n_members, member in enumerate(tf, start=1):
                if n_members > limits.max_members:
                    raise DatasetFormatError(f"archive has more than {limits.max_members} members")
                parts = safe_parts(member.name)
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
                check_total(total, limits, compressed)
                if _is_image_member(parts):
                    entries.append((parts, _read_tar_member(tf, member)))
                check_ratio(reader.count, limits, compressed)
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
    sources = ["/".join(parts) for parts, _ in entries]
    return finish(x, labels, fmt, limits, len(class_names), class_names, sources=sources)


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
