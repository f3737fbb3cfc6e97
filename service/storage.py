"""Content-addressed dataset files in a local directory.

An upload streams to a temporary file while its sha256 and size are computed;
only a complete file within the size limit is moved (atomically) to
``<sha[:2]>/<sha>.<ext>``. URIs look like ``local:ab/ab12....npz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024
SCHEME = "local:"


class UploadTooLarge(ValueError):
    """The upload exceeds ``max_upload_bytes``."""


@dataclass(frozen=True)
class StagedFile:
    """An upload written to a temporary file, hashed, not yet stored."""

    path: Path
    sha256: str
    size_bytes: int


class LocalStorage:
    """Dataset files under ``root``; every name derives from the content's sha256."""

    def __init__(self, root: Path, max_upload_bytes: int) -> None:
        self.root = root
        self.max_upload_bytes = max_upload_bytes

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def stage(self, source: BinaryIO, suffix: str = "") -> StagedFile:
        """Copy ``source`` to a temp file, hashing it; delete the temp file on any failure."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=suffix)
        path = Path(name)
        try:
            digest, size = self._copy_hashing(source, os.fdopen(fd, "wb"))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return StagedFile(path, digest, size)

    def _copy_hashing(self, source: BinaryIO, target: BinaryIO) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        with target:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > self.max_upload_bytes:
                    raise UploadTooLarge(
                        f"upload exceeds the limit of {self.max_upload_bytes} bytes"
                    )
                digest.update(chunk)
                target.write(chunk)
            target.flush()
            os.fsync(target.fileno())
        return digest.hexdigest(), size

    def uri_for(self, staged: StagedFile, ext: str) -> str:
        """The URI :meth:`commit` will give ``staged``."""
        return f"{SCHEME}{staged.sha256[:2]}/{staged.sha256}.{ext.lstrip('.')}"

    def commit(self, staged: StagedFile, ext: str) -> str:
        """Move a staged file to its content address; returns its URI."""
        key = self.uri_for(staged, ext)[len(SCHEME) :]
        final = self.root / key
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        return SCHEME + key

    def discard(self, staged: StagedFile) -> None:
        staged.path.unlink(missing_ok=True)

    def path_for(self, uri: str) -> Path:
        """Local path of ``uri``; refuses URIs that would escape the root."""
        if not uri.startswith(SCHEME):
            raise ValueError(f"not a local storage URI: {uri!r}")
        root = self.root.resolve()
        path = (root / uri[len(SCHEME) :]).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"URI escapes the storage root: {uri!r}")
        return path

    def exists(self, uri: str) -> bool:
        return self.path_for(uri).is_file()

    @contextlib.contextmanager
    def open(self, uri: str) -> Iterator[BinaryIO]:
        with self.path_for(uri).open("rb") as f:
            yield f

    def delete(self, uri: str) -> None:
        self.path_for(uri).unlink(missing_ok=True)

    def delete_job_scratch(self, job_id: str) -> None:
        """The worker's scratch directory of a job (checkpoints), if any."""
        root = (self.root / "jobs").resolve()
        path = (root / job_id).resolve()
        if path.parent == root:
            shutil.rmtree(path, ignore_errors=True)

    def sweep_staged(self, max_age_s: float) -> list[Path]:
        """Remove staged uploads older than ``max_age_s`` (left by a killed process)."""
        cutoff = time.time() - max_age_s
        removed = []
        for path in self.tmp_dir.glob("*") if self.tmp_dir.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):  # another sweeper was faster
                if path.is_file() and path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed.append(path)
        return removed

    def job_scratch_ids(self) -> list[str]:
        """Ids of the jobs that have a scratch directory."""
        root = self.root / "jobs"
        return [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
