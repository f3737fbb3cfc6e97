"""``/ui``: the dashboard pages, over the service layer (``service.jobs``, ``datasets``...).

Fragments (``/ui/jobs/rows``, ``/ui/jobs/{id}/status``) are what ``static/ui.js``
polls to keep the jobs list and a running job's status live.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session, sessionmaker
from starlette.background import BackgroundTask

from detection.readers import write_npz
from detection.registry import DETECTORS
from service import datasets, jobs, scores
from service import repository as repo
from service.api.deps import PrincipalDep
from service.auth import Principal
from service.db import SessionDep
from service.errors import InvalidInput
from service.models import FINISHED_STATES, Dataset, JobState
from service.web.data import DatasetCache, require_loaded
from service.web.templating import render
from service.web.views import PAGE_SIZE, Thumb, cleansed_indices, job_view

router = APIRouter(prefix="/ui", include_in_schema=False)
JOBS_PER_PAGE = 50
STATES = [s.value for s in JobState]


def _cache(request: Request) -> DatasetCache:
    cache: DatasetCache = request.app.state.dataset_cache
    return cache


def _refresh_ms(request: Request) -> int:
    """How often the live parts poll (``app.state.ui_refresh_ms``)."""
    return int(request.app.state.ui_refresh_ms)


def _factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    return factory


def sample_url(dataset_id: str) -> Thumb:
    return lambda i: f"/datasets/{dataset_id}/samples/{i}.png"


@router.get("")
def index() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=307)


FilterQuery = Annotated[str | None, Query(max_length=64)]
OffsetQuery = Annotated[int, Query(ge=0)]


def _filters(
    state: FilterQuery = None, method: FilterQuery = None, dataset_id: FilterQuery = None
) -> repo.JobFilters:
    """The API's filters from the query; an empty form field means no filter."""
    state, method, dataset_id = state or None, method or None, dataset_id or None
    if state is not None and state not in STATES:
        raise InvalidInput(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
    return repo.JobFilters(state=state, method=method, dataset_id=dataset_id)


JobFiltersDep = Annotated[repo.JobFilters, Depends(_filters)]


def _rows_context(
    request: Request,
    session: Session,
    principal: Principal,
    filters: repo.JobFilters,
    offset: int,
) -> dict[str, object]:
    items, total = jobs.list_page(session, filters, JOBS_PER_PAGE, offset, principal)
    names: dict[str, Dataset] = {}
    for job in items:
        if job.dataset_id not in names:
            names[job.dataset_id] = datasets.get(session, job.dataset_id)
    query = {k: v for k, v in vars(filters).items() if v is not None and k != "tenant"}

    def page_url(at: int) -> str:
        return "/ui/jobs?" + urlencode({**query, "offset": at})

    return {
        "jobs": items,
        "datasets": names,
        "total": total,
        "offset": offset,
        "newer_url": page_url(max(offset - JOBS_PER_PAGE, 0)) if offset > 0 else None,
        "older_url": page_url(offset + JOBS_PER_PAGE) if offset + JOBS_PER_PAGE < total else None,
        "query": urlencode({**query, "offset": offset}),
        "filters": filters,
        "refresh_ms": _refresh_ms(request),
    }


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    filters: JobFiltersDep,
    offset: OffsetQuery = 0,
) -> HTMLResponse:
    ctx = _rows_context(request, session, principal, filters, offset)
    html = render("jobs.html", states=STATES, methods=DETECTORS.names(), principal=principal, **ctx)
    return HTMLResponse(html)


@router.get("/jobs/rows", response_class=HTMLResponse)
def jobs_rows(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    filters: JobFiltersDep,
    offset: OffsetQuery = 0,
) -> HTMLResponse:
    """The jobs table's body alone: what the list page polls."""
    ctx = _rows_context(request, session, principal, filters, offset)
    return HTMLResponse(render("_job_rows.html", **ctx))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    job_id: str,
    rank: Annotated[int, Query(ge=1, description="first rank of the suspect grid")] = 1,
    method: Annotated[str | None, Query(max_length=64, description="whose scores")] = None,
) -> HTMLResponse:
    job = jobs.get(session, job_id, principal=principal)
    view = job_view(
        session,
        _factory(request),
        _cache(request),
        job_id,
        sample_url(job.dataset_id),
        rank,
        score_cache=request.app.state.score_cache,
        method=method,
        principal=principal,
    )
    html = render(
        "job.html", v=view, job=view.job, refresh_ms=_refresh_ms(request), page_size=PAGE_SIZE
    )
    return HTMLResponse(html)


@router.get("/jobs/{job_id}/status", response_class=HTMLResponse)
def job_status(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    job_id: str,
    was_finished: Annotated[bool, Query()] = True,
) -> HTMLResponse:
    """The job's live status box; asks the page to reload once an unfinished job finished."""
    job = jobs.get(session, job_id, principal=principal)
    finished = job.state in FINISHED_STATES
    reload = finished and not was_finished
    html = render("_job_status.html", job=job, refresh_ms=_refresh_ms(request), reload=reload)
    return HTMLResponse(html)


@router.get("/jobs/{job_id}/cleansed.csv")
def cleansed_csv(
    request: Request, principal: PrincipalDep, session: SessionDep, job_id: str
) -> Response:
    """The sample indices to keep (not flagged), one per line after a header."""
    method = scores.require_succeeded(session, job_id, principal=principal)
    keep = cleansed_indices(_factory(request), job_id, method)
    body = "sample_index\n" + "".join(f"{i}\n" for i in keep.tolist())
    disposition = f'attachment; filename="{job_id}-cleansed-indices.csv"'
    return Response(body, media_type="text/csv", headers={"Content-Disposition": disposition})


@router.get("/jobs/{job_id}/cleansed.npz")
def cleansed_npz(
    request: Request, principal: PrincipalDep, session: SessionDep, job_id: str
) -> FileResponse:
    """A copy of the dataset without the flagged samples (``x``, ``y``, ``source_index``)."""
    method = scores.require_succeeded(session, job_id, principal=principal)
    job = jobs.get(session, job_id, principal=principal)
    data = require_loaded(_cache(request), datasets.get(session, job.dataset_id))
    keep = cleansed_indices(_factory(request), job_id, method)
    extra: dict[str, np.ndarray] = {"source_index": keep}
    if data.class_names is not None:
        extra["class_names"] = np.asarray(data.class_names)
    tmp_dir = _cache(request).storage.tmp_dir
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".npz")
    os.close(fd)
    path = Path(name)
    write_npz(path, data.x[keep], data.labels[keep], n_classes=np.int64(data.n_classes), **extra)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{job_id}-cleansed.npz",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )
