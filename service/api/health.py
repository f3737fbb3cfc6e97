"""Liveness (``/healthz``) and readiness (``/readyz``: database and broker)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from service import reaper
from service.api.deps import QueueDep
from service.api.responses import problems
from service.errors import ProblemResponse, problem
from service.schemas import Health

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (async: answers even when every worker thread is busy)."""
    return Health(status="ok")


def _check_db(factory: sessionmaker[Session]) -> str:
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readiness: database unavailable: %s", exc)
        return "unavailable"
    return "ok"


def _check_broker(queue: QueueDep) -> str:
    try:
        queue.ping()
    except Exception as exc:
        log.warning("readiness: broker unavailable: %s", exc)
        return "unavailable"
    return "ok"


def _check_workers(factory: sessionmaker[Session], timeout_s: float) -> str:
    try:
        with factory() as session:
            alive = reaper.live_workers(session, timeout_s)
    except Exception as exc:
        log.warning("readiness: worker heartbeats unreadable: %s", exc)
        return "unknown"
    return "ok" if alive else "none alive"


@router.get("/readyz", response_model=Health, responses=problems(503))
def readyz(request: Request, queue: QueueDep) -> Health | ProblemResponse:
    """Ready when the database answers ``SELECT 1`` and the broker accepts a connection.

    ``checks.workers`` says whether a worker heartbeat is fresh; without one the
    API still serves (status ``degraded``) but no job will run.
    """
    factory = request.app.state.sessionmaker
    checks = {"database": _check_db(factory), "broker": _check_broker(queue)}
    down = sorted(name for name, status in checks.items() if status != "ok")
    if down:
        response = problem(503, f"unavailable: {', '.join(down)}", instance=request.url.path)
        response.headers["Retry-After"] = "5"
        return response
    checks["workers"] = _check_workers(factory, request.app.state.settings.heartbeat_timeout_s)
    return Health(status="ok" if checks["workers"] == "ok" else "degraded", checks=checks)
