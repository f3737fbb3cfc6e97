"""``/datasets``: content-addressed uploads (the work is in :mod:`service.datasets`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from service import datasets
from service.api.deps import SessionDep, SettingsDep, StorageDep
from service.limits import upload_limits
from service.models import Dataset
from service.schemas import DatasetPage, DatasetRead

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", response_model=DatasetRead, status_code=201)
def create_dataset(
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description="npz, ImageFolder zip/tar, parquet or csv")],
    name: Annotated[str | None, Form(max_length=255)] = None,
) -> Dataset:
    """Upload a dataset; the same bytes return the existing dataset (200)."""
    limits = upload_limits(settings)
    stored = datasets.create(session, storage, file.file, file.filename, name, limits)
    if not stored.created:
        response.status_code = 200
    response.headers["Location"] = f"/datasets/{stored.dataset.id}"
    return stored.dataset


@router.get("", response_model=DatasetPage)
def list_datasets(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> DatasetPage:
    items, total = datasets.list_page(session, limit, offset)
    return DatasetPage(
        items=[DatasetRead.model_validate(d) for d in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(session: SessionDep, dataset_id: str) -> Dataset:
    return datasets.get(session, dataset_id)
