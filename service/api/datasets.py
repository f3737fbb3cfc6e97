"""``/datasets``: content-addressed uploads (the work is in :mod:`service.datasets`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from service import datasets
from service.api.deps import IdempotencyKey, PrincipalDep, SessionDep, SettingsDep, StorageDep
from service.api.responses import problems
from service.limits import upload_limits
from service.models import Dataset
from service.schemas import DatasetImport, DatasetPage, DatasetRead

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=problems(401))
REUPLOAD: dict[int | str, dict[str, Any]] = {
    200: {"model": DatasetRead, "description": "The same bytes were stored before."}
}


@router.post(
    "",
    response_model=DatasetRead,
    status_code=201,
    responses={**REUPLOAD, **problems(409, 413, 422, 429)},
)
def create_dataset(
    principal: PrincipalDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description="npz, ImageFolder zip/tar, parquet or csv")],
    name: Annotated[str | None, Form(max_length=255)] = None,
    idempotency_key: IdempotencyKey = None,
) -> Dataset:
    """Upload a dataset (201); the same bytes return the existing dataset (200)."""
    stored = datasets.create(
        session,
        storage,
        file.file,
        file.filename,
        name,
        idempotency_key=idempotency_key,
        limits=upload_limits(settings),
        principal=principal,
    )
    if not stored.created:
        response.status_code = 200
    response.headers["Location"] = f"/datasets/{stored.dataset.id}"
    return stored.dataset


@router.post(
    "/import",
    response_model=DatasetRead,
    status_code=201,
    responses={**REUPLOAD, **problems(409, 413, 422, 429)},
)
def import_dataset(
    principal: PrincipalDep,
    body: DatasetImport,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Dataset:
    """Copy a dataset from s3://, https:// or file:// (under an allowed root) and check it
    like an upload (201); bytes stored before return that dataset (200)."""
    stored = datasets.create_from_reference(
        session,
        storage,
        settings,
        body.uri,
        body.name,
        idempotency_key,
        upload_limits(settings),
        principal,
    )
    if not stored.created:
        response.status_code = 200
    response.headers["Location"] = f"/datasets/{stored.dataset.id}"
    return stored.dataset


@router.get("", response_model=DatasetPage)
def list_datasets(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> DatasetPage:
    """Newest first; a tenant's own datasets (every tenant's for the admin scope)."""
    items, total = datasets.list_page(session, limit, offset, principal)
    return DatasetPage(
        items=[DatasetRead.model_validate(d) for d in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{dataset_id}", response_model=DatasetRead, responses=problems(404))
def get_dataset(principal: PrincipalDep, session: SessionDep, dataset_id: str) -> Dataset:
    return datasets.get(session, dataset_id, principal)


@router.delete("/{dataset_id}", status_code=204, responses=problems(404, 409))
def delete_dataset(
    principal: PrincipalDep, session: SessionDep, storage: StorageDep, dataset_id: str
) -> Response:
    """Delete a dataset and its file (409 while a job uses it: delete the jobs first)."""
    datasets.delete(session, storage, dataset_id, principal)
    return Response(status_code=204)
