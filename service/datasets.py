"""Datasets: content-addressed files validated by ``detection.readers``, one row each.

Service vocabulary: :func:`get`, :func:`list_page`, :func:`create`,
:func:`create_from_reference`, :func:`delete`. Functions
take the session first, raise :mod:`service.errors` domain errors and never
speak HTTP; the request boundary commits. A ``principal`` scopes them to its
tenant: another tenant's dataset is :class:`NotFound`, as if it did not exist.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from detection.readers import DatasetFormatError, LoadedDataset, ReaderLimits, read_dataset
from service import idempotency, quotas, references
from service import repository as repo
from service.auth import OPEN, Principal
from service.config import Settings
from service.errors import Conflict, InvalidInput, NotFound, TooLarge
from service.guards import is_infrastructure_fault
from service.idempotency import IdempotentRequest
from service.models import Dataset
from service.storage import LocalStorage, StagedFile, UploadTooLarge

log = logging.getLogger(__name__)
SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")


@dataclass(frozen=True)
class Created:
    """The stored dataset; ``created`` is False when the same bytes were stored before."""

    dataset: Dataset
    created: bool


def get(session: Session, dataset_id: str, principal: Principal = OPEN) -> Dataset:
    dataset = repo.get_dataset(session, dataset_id, principal.visible_tenant)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


def list_page(
    session: Session, limit: int, offset: int, principal: Principal = OPEN
) -> tuple[Sequence[Dataset], int]:
    """Newest first: one page of the datasets the principal sees and their total count."""
    return repo.list_datasets(session, limit, offset, principal.visible_tenant)


def upload_suffix(filename: str | None) -> str:
    """The suffix the readers use to pick a format (``.tar.gz`` kept whole)."""
    suffixes = [s.lower() for s in Path(filename or "").suffixes[-2:]]
    if len(suffixes) == 2 and suffixes[0] != ".tar":
        suffixes = suffixes[-1:]
    # Only short alphanumeric suffixes reach the file system (no ENAMETOOLONG, no odd bytes).
    return "".join(s for s in suffixes if SUFFIX.match(s))


def create(
    session: Session,
    storage: LocalStorage,
    source: BinaryIO,
    filename: str | None = None,
    name: str | None = None,
    idempotency_key: str | None = None,
    source_uri: str | None = None,
    limits: ReaderLimits | None = None,
    principal: Principal = OPEN,
) -> Created:
    """Store ``source`` under its sha256 after validating it; the same bytes return the first.

    The dataset belongs to the principal's tenant; the same bytes stored by
    another tenant are neither returned nor reused (a row of its own). A new
    dataset counts against the key's upload quotas (:class:`QuotaExceeded`).

    With ``idempotency_key``, a repeat of the same upload (bytes, name, filename)
    returns the first outcome; another upload under the key is a :class:`Conflict`.
    The staged file is removed on every failure path; the stored file is moved
    into place only once its row was inserted (no orphans from a failed insert).
    """
    staged = _stage(storage, source, filename)
    try:
        request = None
        if idempotency_key is not None:
            body = {"sha256": staged.sha256, "name": name, "filename": filename}
            request = IdempotentRequest(
                "datasets",
                idempotency.scoped_key(idempotency_key, principal.tenant),
                idempotency.fingerprint(body),
                shown=idempotency_key,
            )
        record = idempotency.replayed(session, request)
        if record is not None:
            dataset = get(session, record.resource_id, principal)
            return Created(dataset, created=record.status_code == 201)
        stored = _store(
            session,
            storage,
            staged,
            name or filename,
            source_uri,
            limits or ReaderLimits(),
            principal,
        )
        idempotency.remember(session, request, 201 if stored.created else 200, stored.dataset.id)
        return stored
    finally:
        storage.discard(staged)  # a no-op once committed (moved away)


def create_from_reference(
    session: Session,
    storage: LocalStorage,
    settings: Settings,
    uri: str,
    name: str | None = None,
    idempotency_key: str | None = None,
    limits: ReaderLimits | None = None,
    principal: Principal = OPEN,
) -> Created:
    """Copy the dataset at ``uri`` into storage with the checks of an upload (size first)."""
    ref = references.resolve(uri, settings)
    size = references.size(ref)
    if size is not None and size > storage.max_upload_bytes:
        raise TooLarge(f"{uri} holds {size} bytes; the limit is {storage.max_upload_bytes}")
    with references.open_reference(ref) as fh:
        return create(
            session,
            storage,
            fh,
            ref.filename,
            name,
            idempotency_key,
            source_uri=uri,
            limits=limits,
            principal=principal,
        )


def _store(
    session: Session,
    storage: LocalStorage,
    staged: StagedFile,
    name: str | None,
    source_uri: str | None,
    limits: ReaderLimits,
    principal: Principal,
) -> Created:
    existing = repo.get_dataset_by_sha256(session, staged.sha256, principal.tenant)
    if existing is not None:
        return Created(existing, created=False)
    quotas.check_upload(session, principal, staged.size_bytes, lock=False)  # before decoding
    loaded = _validate(staged, limits)
    quotas.check_upload(session, principal, staged.size_bytes)  # under the key's lock
    uri = storage.uri_for(staged, loaded.format)
    fields = _dataset_fields(name or staged.sha256[:12], staged, loaded, uri)
    fields.update(source_uri=source_uri, tenant=principal.tenant, api_key_id=principal.key_id)
    try:
        with session.begin_nested():
            dataset = repo.create_dataset(session, **fields)
            repo.create_dataset_samples(session, dataset.id, loaded.sources or [])
            storage.commit(staged, loaded.format)
            return Created(dataset, created=True)
    except IntegrityError:
        # A concurrent upload of the same bytes won; its row owns the same file.
        existing = _existing_or_conflict(session, staged.sha256, principal.tenant)
        return Created(existing, created=False)


def delete(
    session: Session, storage: LocalStorage, dataset_id: str, principal: Principal = OPEN
) -> None:
    """Delete a dataset no job uses, then its file; :class:`Conflict` while jobs use it.

    The file stays while another tenant's dataset was stored from the same bytes.
    """
    dataset = get(session, dataset_id, principal)
    n_jobs = repo.count_jobs_using_dataset(session, dataset_id)
    if n_jobs:
        raise Conflict(f"dataset {dataset_id} is used by {n_jobs} job(s); delete them first")
    uri = dataset.storage_uri
    repo.delete_dataset(session, dataset)
    shared = repo.count_datasets_with_file(session, uri)
    session.commit()  # the row goes first: a file without a row is only garbage
    if not shared:
        storage.delete(uri)


def _stage(storage: LocalStorage, source: BinaryIO, filename: str | None) -> StagedFile:
    try:
        return storage.stage(source, suffix=upload_suffix(filename))
    except UploadTooLarge as exc:
        raise TooLarge(str(exc)) from None


def _validate(staged: StagedFile, limits: ReaderLimits) -> LoadedDataset:
    try:
        return read_dataset(staged.path, limits=limits)
    except DatasetFormatError as exc:
        raise InvalidInput(f"invalid dataset: {exc}") from None
    except MemoryError:
        raise TooLarge("the dataset does not fit in the server's memory once decoded") from None
    except Exception as exc:
        if is_infrastructure_fault(exc):
            raise
        # A parser error the reader did not translate (e.g. a malformed .npy header).
        log.info("upload refused: %s: %s", type(exc).__name__, exc)
        raise InvalidInput(f"invalid dataset: unreadable file ({type(exc).__name__})") from None


def _dataset_fields(
    name: str, staged: StagedFile, loaded: LoadedDataset, uri: str
) -> dict[str, object]:
    return {
        "name": name,
        "format": loaded.format,
        "sha256": staged.sha256,
        "size_bytes": staged.size_bytes,
        "n_samples": loaded.n_samples,
        "sample_shape": [int(d) for d in loaded.sample_shape],
        "n_classes": int(loaded.n_classes),
        "class_counts": [int(c) for c in loaded.class_counts()],
        "class_names": loaded.class_names,
        "storage_uri": uri,
    }


def _existing_or_conflict(session: Session, sha256: str, tenant: str) -> Dataset:
    dataset = repo.get_dataset_by_sha256(session, sha256, tenant)
    if dataset is None:
        raise Conflict("dataset could not be stored; retry")
    return dataset
