"""``/jobs``: create, read, list, cancel (the work is in :mod:`service.jobs`)."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from service import jobs
from service import repository as repo
from service.api.deps import IdempotencyKey, PrincipalDep, QueueDep, SessionDep, StorageDep
from service.api.responses import problems
from service.auth import Principal
from service.models import Job, JobState
from service.schemas import JobCreate, JobCreated, JobPage, JobRead

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=problems(401))


CANCEL_RESPONSES = {
    200: {"model": JobRead, "description": "Cancelled (it was queued) or already cancelled."},
    202: {"model": JobRead, "description": "Cancelling: the worker stops at its next check."},
    **problems(404, 409),
}


@router.post(
    "",
    response_model=JobCreated,
    status_code=202,
    responses=problems(404, 409, 413, 422, 429, 503),
)
def create_job(
    principal: PrincipalDep,
    body: JobCreate,
    session: SessionDep,
    queue: QueueDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """Validate, store (state ``queued``), commit, then enqueue.

    With a ``callback_url``, the response carries the webhook's signing secret (only here).
    """
    job = jobs.create(session, queue, body, idempotency_key, principal)
    response.headers["Location"] = f"/jobs/{job.id}"
    return job


@router.get("/{job_id}", response_model=JobRead, responses=problems(404))
async def get_job(principal: PrincipalDep, session: SessionDep, job_id: str) -> JobRead:
    # The pollers' path: read and shape the job in one worker-thread hop (a sync route
    # takes a second one to validate its response). No docstring: it would become the
    # operation's description in the OpenAPI document.
    return await to_thread.run_sync(_read_job, session, job_id, principal)


def _read_job(session: Session, job_id: str, principal: Principal) -> JobRead:
    return JobRead.model_validate(jobs.get(session, job_id, principal=principal))


@router.get("", response_model=JobPage)
def list_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    state: JobState | None = None,
    method: Annotated[str | None, Query(max_length=64)] = None,
    dataset_id: Annotated[str | None, Query(max_length=36)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> JobPage:
    """Newest first, filtered by state, method and dataset."""
    filters = repo.JobFilters(state=state and state.value, method=method, dataset_id=dataset_id)
    items, total = jobs.list_page(session, filters, limit, offset, principal)
    return JobPage(
        items=[JobRead.model_validate(j) for j in items], total=total, limit=limit, offset=offset
    )


@router.post("/{job_id}/cancel", response_model=JobRead, responses=CANCEL_RESPONSES)
def cancel_job(
    principal: PrincipalDep, session: SessionDep, job_id: str, response: Response
) -> Job:
    """queued -> cancelled (200); running -> cancelling (202); finished -> 409."""
    job = jobs.cancel(session, job_id, principal)
    response.status_code = 202 if job.state == JobState.cancelling else 200
    return job


@router.delete("/{job_id}", status_code=204, responses=problems(404, 409))
def delete_job(
    principal: PrincipalDep, session: SessionDep, storage: StorageDep, job_id: str
) -> Response:
    """Delete a finished job and its scores (409 while it is queued or running: cancel it)."""
    jobs.delete(session, storage, job_id, principal)
    return Response(status_code=204)
