"""``/jobs``: create, read, list, cancel (the work is in :mod:`service.jobs`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from service import jobs
from service import repository as repo
from service.api.deps import QueueDep, SessionDep
from service.models import Job
from service.schemas import JobCreate, JobPage, JobRead

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", response_model=JobRead, status_code=202)
def create_job(body: JobCreate, session: SessionDep, queue: QueueDep, response: Response) -> Job:
    """Validate, store (state ``queued``), commit, then enqueue."""
    job = jobs.create(session, queue, body)
    response.headers["Location"] = f"/jobs/{job.id}"
    return job


@router.get("/{job_id}", response_model=JobRead)
def get_job(session: SessionDep, job_id: str) -> Job:
    return jobs.get(session, job_id)


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
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> JobPage:
    filters = repo.JobFilters(state=state, method=method, dataset_id=dataset_id)
    items, total = jobs.list_page(session, filters, limit, offset)
    return JobPage(
        items=[JobRead.model_validate(j) for j in items], total=total, limit=limit, offset=offset
    )


@router.delete("/{job_id}", response_model=JobRead)
def cancel_job(session: SessionDep, job_id: str, response: Response) -> Job:
    """queued -> cancelled (200); running -> cancelling (202); finished -> 409."""
    job = jobs.cancel(session, job_id)
    response.status_code = 202 if job.state == "cancelling" else 200
    return job
