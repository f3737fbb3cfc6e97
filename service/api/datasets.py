"""``/datasets``: content-addressed uploads, validated by ``detection.readers``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile
from sqlalchemy.exc import IntegrityError

from detection.readers import DatasetFormatError, LoadedDataset, read_dataset
from service import repository as repo
from service.api.deps import SessionDep, StorageDep
from service.errors import ProblemError
from service.models import Dataset
from service.schemas import DatasetPage, DatasetRead
from service.storage import LocalStorage, StagedFile, UploadTooLarge

router = APIRouter(prefix="/datasets", tags=["datasets"])


def upload_suffix(filename: str | None) -> str:
    """The suffix the readers use to pick a format (``.tar.gz`` kept whole)."""
    suffixes = Path(filename or "").suffixes[-2:]
    if len(suffixes) == 2 and suffixes[0].lower() != ".tar":
        suffixes = suffixes[-1:]
    return "".join(suffixes).lower()


def _stage(storage: LocalStorage, upload: UploadFile) -> StagedFile:
    try:
        return storage.stage(upload.file, suffix=upload_suffix(upload.filename))
    except UploadTooLarge as exc:
        raise ProblemError(413, str(exc)) from None


def _validate(storage: LocalStorage, staged: StagedFile) -> LoadedDataset:
    try:
        return read_dataset(staged.path)
    except DatasetFormatError as exc:
        storage.discard(staged)
        raise ProblemError(422, f"invalid dataset: {exc}") from None
    except BaseException:
        storage.discard(staged)
        raise


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
        "storage_uri": uri,
    }


@router.post("", response_model=DatasetRead, status_code=201)
def create_dataset(
    session: SessionDep,
    storage: StorageDep,
    response: Response,
    file: Annotated[UploadFile, File(description="npz, ImageFolder zip/tar, parquet or csv")],
    name: Annotated[str | None, Form(max_length=255)] = None,
) -> Dataset:
    """Upload a dataset; the same bytes return the existing dataset (200)."""
    staged = _stage(storage, file)
    existing = repo.get_dataset_by_sha256(session, staged.sha256)
    if existing is not None:
        storage.discard(staged)
        response.status_code = 200
        return existing
    loaded = _validate(storage, staged)
    uri = storage.commit(staged, loaded.format)
    fields = _dataset_fields(name or file.filename or staged.sha256[:12], staged, loaded, uri)
    try:
        with session.begin_nested():
            dataset = repo.create_dataset(session, **fields)
    except IntegrityError:
        # A concurrent upload of the same bytes won; its row owns the same file.
        dataset = _existing_or_raise(session, staged.sha256)
        response.status_code = 200
    response.headers["Location"] = f"/datasets/{dataset.id}"
    return dataset


def _existing_or_raise(session: SessionDep, sha256: str) -> Dataset:
    dataset = repo.get_dataset_by_sha256(session, sha256)
    if dataset is None:
        raise HTTPException(409, "dataset could not be stored; retry")
    return dataset


@router.get("", response_model=DatasetPage)
def list_datasets(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DatasetPage:
    items, total = repo.list_datasets(session, limit, offset)
    return DatasetPage(
        items=[DatasetRead.model_validate(d) for d in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(session: SessionDep, dataset_id: str) -> Dataset:
    dataset = repo.get_dataset(session, dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset {dataset_id} not found")
    return dataset
