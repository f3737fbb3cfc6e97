"""``/jobs``: create (validated against the registry), read, list, cancel."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import ValidationError

from detection.registry import DETECTORS, parse_detector_params
from detection.version import code_version
from service import repository as repo
from service.api.deps import QueueDep, SessionDep
from service.errors import ProblemError, validation_errors
from service.models import Dataset, Job
from service.schemas import JobCreate, JobPage, JobRead

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = logging.getLogger(__name__)


def validated_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The params model's full dump (defaults filled), or a 422 problem."""
    if method not in DETECTORS:
        err: dict[str, Any] = {"loc": ["body", "method"], "type": "enum"}
        err |= {"msg": f"unknown method {method!r}", "ctx": {"expected": DETECTORS.names()}}
        raise ProblemError(422, f"unknown method {method!r}", [err])
    try:
        return parse_detector_params(method, params).model_dump(mode="json")
    except ValidationError as exc:
        errors = validation_errors(exc, ("body", "params"))
        raise ProblemError(422, f"invalid params for method {method!r}", errors) from None


def _dataset_or_404(session: SessionDep, dataset_id: str) -> Dataset:
    dataset = repo.get_dataset(session, dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset {dataset_id} not found")
    return dataset


def _check_clean(dataset: Dataset, clean: Dataset) -> None:
    if clean.sample_shape != dataset.sample_shape or clean.n_classes != dataset.n_classes:
        raise ProblemError(
            422,
            "the clean dataset must have the same sample shape and number of classes: "
            f"{clean.sample_shape}/{clean.n_classes} vs {dataset.sample_shape}/{dataset.n_classes}",
        )


def _check_indices(name: str, indices: list[int] | None, n_samples: int) -> list[int] | None:
    if indices is None:
        return None
    arr = np.asarray(indices, dtype=np.int64)
    loc = ["body", f"ground_truth_{name}_indices"]
    if arr.size and (arr.min() < 0 or arr.max() >= n_samples):
        msg = f"indices must lie in [0, {n_samples})"
        raise ProblemError(422, msg, [{"loc": loc, "msg": msg, "type": "out_of_range"}])
    if np.unique(arr).size != arr.size:
        msg = "indices must be unique"
        raise ProblemError(422, msg, [{"loc": loc, "msg": msg, "type": "duplicate"}])
    return sorted(indices)


def ground_truth(body: JobCreate, n_samples: int) -> dict[str, Any] | None:
    poison = _check_indices("poison", body.ground_truth_poison_indices, n_samples)
    cover = _check_indices("cover", body.ground_truth_cover_indices, n_samples)
    if poison is None:
        if cover is not None:
            raise ProblemError(422, "cover indices need poison indices")
        return None
    if cover and np.intersect1d(poison, cover).size:
        raise ProblemError(422, "poison and cover indices must be disjoint")
    return {"poison_indices": poison, "cover_indices": cover or []}


@router.post("", response_model=JobRead, status_code=202)
def create_job(body: JobCreate, session: SessionDep, queue: QueueDep, response: Response) -> Job:
    """Validate, store (state ``queued``), commit, then enqueue."""
    params = validated_params(body.method, body.params)
    dataset = _dataset_or_404(session, body.dataset_id)
    if body.clean_dataset_id is not None:
        _check_clean(dataset, _dataset_or_404(session, body.clean_dataset_id))
    job = repo.create_job(
        session,
        dataset_id=dataset.id,
        clean_dataset_id=body.clean_dataset_id,
        method=body.method,
        params=params,
        seed=body.seed,
        ground_truth=ground_truth(body, dataset.n_samples),
        code_version=code_version(),
    )
    session.commit()
    _enqueue_or_fail(session, queue, job)
    response.headers["Location"] = f"/jobs/{job.id}"
    return job


def _enqueue_or_fail(session: SessionDep, queue: QueueDep, job: Job) -> None:
    try:
        queue.enqueue(job.id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job.id)
        repo.mark_job_failed(session, job.id, f"could not enqueue: {type(exc).__name__}")
        session.commit()
        raise ProblemError(503, "the job queue is unavailable; the job was marked failed") from None


def job_or_404(session: SessionDep, job_id: str) -> Job:
    job = repo.get_job(session, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


@router.get("/{job_id}", response_model=JobRead)
def get_job(session: SessionDep, job_id: str) -> Job:
    return job_or_404(session, job_id)


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    state: Annotated[
        str | None,
        Query(pattern="^(queued|running|succeeded|failed|cancelling|cancelled)$"),
    ] = None,
    method: Annotated[str | None, Query(max_length=64)] = None,
    dataset_id: Annotated[str | None, Query(max_length=36)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    filters = repo.JobFilters(state=state, method=method, dataset_id=dataset_id)
    items, total = repo.list_jobs(session, filters, limit, offset)
    return JobPage(
        items=[JobRead.model_validate(j) for j in items], total=total, limit=limit, offset=offset
    )


@router.delete("/{job_id}", response_model=JobRead)
def cancel_job(session: SessionDep, job_id: str, response: Response) -> Job:
    """queued -> cancelled (200); running -> cancelling (202); finished -> 409."""
    job = repo.get_job(session, job_id, for_update=True)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    try:
        job = repo.request_cancel(session, job)
    except repo.InvalidTransition as exc:
        raise HTTPException(409, str(exc)) from None
    response.status_code = 202 if job.state == "cancelling" else 200
    return job
