"""``GET /jobs/{id}/report.html``: the job's self-contained HTML report, as a download."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from service.api.deps import PrincipalDep
from service.db import SessionDep
from service.web.report import render_report

router = APIRouter(tags=["reports"])

HTML_PAGE = {"text/html": {"schema": {"type": "string"}}}
RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "The report, one self-contained HTML file.", "content": HTML_PAGE},
    404: {"description": "No such job (an HTML error page).", "content": HTML_PAGE},
}


@router.get("/jobs/{job_id}/report.html", response_class=HTMLResponse, responses=RESPONSES)
def job_report(
    request: Request, principal: PrincipalDep, session: SessionDep, job_id: str
) -> HTMLResponse:
    """One HTML file with the run manifest, the detection table, the plots and the gallery."""
    html = render_report(
        session,
        request.app.state.sessionmaker,
        request.app.state.dataset_cache,
        job_id,
        principal,
    )
    disposition = f'inline; filename="{job_id}-report.html"'
    return HTMLResponse(html, headers={"Content-Disposition": disposition})
