"""Datasets by reference: ``s3://``, ``https://`` and ``file://`` read through fsspec.

A reference is resolved against the settings before anything is read: only
these schemes; ``file://`` only below an allow-listed root (after symlinks are
resolved); S3 through ``settings.s3_endpoint_url`` when set (an S3-compatible
server), with the standard AWS credentials of the environment. The bytes then
go through the same staging, size limit and format checks as an upload.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import fsspec
from fsspec.spec import AbstractFileSystem

from service.config import Settings
from service.errors import InvalidInput, field_error

SCHEMES = ("s3", "https", "file")
LOC: list[str | int] = ["body", "uri"]


@dataclass(frozen=True)
class Reference:
    """A checked reference: the filesystem, the path in it and the file's name."""

    uri: str
    fs: AbstractFileSystem
    path: str
    filename: str


def refuse(msg: str) -> InvalidInput:
    return InvalidInput(msg, [field_error(LOC, msg, "reference")])


def resolve(uri: str, settings: Settings) -> Reference:
    """Check ``uri`` against the allowed schemes and roots; :class:`InvalidInput` otherwise."""
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES:
        raise refuse(f"unsupported scheme {parts.scheme!r}; use one of {', '.join(SCHEMES)}")
    if parts.scheme == "file":
        return _local(uri, parts.netloc, unquote(parts.path), settings)
    if not parts.netloc or not parts.path.strip("/"):
        raise refuse(f"{uri!r} names no object")
    filename = PurePosixPath(unquote(parts.path)).name
    if parts.scheme == "s3":
        options: dict[str, Any] = {}
        if settings.s3_endpoint_url:
            options["client_kwargs"] = {"endpoint_url": settings.s3_endpoint_url}
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
        return Reference(uri, fs, f"{parts.netloc}{parts.path}", filename)
    return Reference(uri, _https(settings), uri, filename)


def _https(settings: Settings) -> AbstractFileSystem:
    options: dict[str, Any] = {}
    if settings.reference_ca_bundle is not None:
        options["ssl"] = ssl.create_default_context(cafile=str(settings.reference_ca_bundle))
    return fsspec.filesystem("https", skip_instance_cache=True, **options)


def _local(uri: str, host: str, path: str, settings: Settings) -> Reference:
    if host not in ("", "localhost"):
        raise refuse("file:// references must name a local path")
    resolved = Path(path).resolve()
    roots = [Path(r).expanduser().resolve() for r in settings.reference_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise refuse(f"{uri!r} is not under an allowed root (POISONSCAN_REFERENCE_ROOTS)")
    return Reference(uri, fsspec.filesystem("file"), str(resolved), resolved.name)


def size(ref: Reference) -> int | None:
    """The object's size in bytes when the store says it (None when it does not)."""
    try:
        info = ref.fs.info(ref.path)
    except FileNotFoundError:
        raise refuse(f"{ref.uri!r} does not exist") from None
    except Exception as exc:  # each store raises its own (aiohttp, botocore, OSError)
        raise refuse(f"{ref.uri!r} cannot be read: {type(exc).__name__}") from None
    if info.get("type") not in (None, "file"):
        raise refuse(f"{ref.uri!r} is not a file")
    value = info.get("size")
    return int(value) if value is not None else None


@contextmanager
def open_reference(ref: Reference) -> Iterator[BinaryIO]:
    """The object as a binary stream, read in blocks."""
    try:
        with ref.fs.open(ref.path, "rb") as fh:
            yield fh
    except FileNotFoundError:
        raise refuse(f"{ref.uri!r} does not exist") from None
