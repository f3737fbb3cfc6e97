"""Dead-job recovery: heartbeats in, a reaper out.

Workers write ``job.heartbeat_at`` while a job runs and a ``worker_heartbeat``
row while they live (see ``worker/heartbeat.py``). :func:`reap` finds jobs whose
worker went silent for ``heartbeat_timeout_s``:

- ``running`` -> ``queued`` and enqueued again (the rerun rewrites the same
  score rows), or ``failed`` once ``max_job_attempts`` attempts were spent;
- ``cancelling`` -> ``cancelled``.

Every change is a conditional update on the state and the stale heartbeat, so
several reapers (API processes, workers) can run at once: one wins each job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import session_scope
from service.models import Job, JobState, WorkerHeartbeat, utcnow
from service.queue import JobQueue
from service.sweeper import sweep

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    """Job ids the reaper changed, by what it did."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def worker_id() -> str:
    """This process, as a worker: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --- heartbeats -------------------------------------------------------------------


def beat_job(session: Session, job_id: str) -> bool:
    """Refresh a running (or cancelling) job's heartbeat."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.state.in_((JobState.running, JobState.cancelling)))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def clear_job_heartbeat(session: Session, job_id: str) -> None:
    stmt = update(Job).where(Job.id == job_id).values(heartbeat_at=None)
    session.execute(stmt.execution_options(synchronize_session=False))


def beat_worker(session: Session, wid: str) -> None:
    """Insert or refresh this worker's row."""
    row = session.get(WorkerHeartbeat, wid)
    if row is None:
        session.add(WorkerHeartbeat(id=wid))
    else:
        row.beat_at = utcnow()
    session.flush()


def remove_worker(session: Session, wid: str) -> None:
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.id == wid))


def live_workers(session: Session, timeout_s: float) -> int:
    """Workers whose heartbeat is younger than ``timeout_s``."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    stmt = select(func.count()).select_from(WorkerHeartbeat)
    return session.scalar(stmt.where(WorkerHeartbeat.beat_at >= cutoff)) or 0


def is_alive(job: Job, timeout_s: float, now: datetime | None = None) -> bool:
    """True while ``job``'s heartbeat is fresh (another worker holds it)."""
    if job.heartbeat_at is None:
        return False
    return (now or utcnow()) - job.heartbeat_at < timedelta(seconds=timeout_s)


# --- the reaper -------------------------------------------------------------------


def _stale(cutoff: datetime) -> ColumnElement[bool]:
    last = func.coalesce(Job.heartbeat_at, Job.started_at, Job.updated_at)
    return last < cutoff


def _set(session: Session, job_id: str, current: str, cutoff: datetime, **values: Any) -> bool:
    """Update a job still in ``current`` with a heartbeat still older than ``cutoff``."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.state == current, _stale(cutoff))
        .values(updated_at=utcnow(), heartbeat_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def _reap_one(
    session: Session, job: Any, settings: Settings, cutoff: datetime, out: Reaped
) -> None:
    silent = f"worker lost: no heartbeat for {settings.heartbeat_timeout_s:g} s"
    if job.state == JobState.cancelling:
        done = {"state": JobState.cancelled.value, "finished_at": utcnow(), "stage": silent}
        if _set(session, job.id, job.state, cutoff, **done):
            out.cancelled.append(job.id)
    elif job.attempts >= settings.max_job_attempts:
        error = f"{silent} after {job.attempts} attempts"
        failed = {"state": JobState.failed.value, "finished_at": utcnow(), "error": error}
        if _set(session, job.id, job.state, cutoff, **failed):
            out.failed.append(job.id)
    elif _set(
        session,
        job.id,
        job.state,
        cutoff,
        state=JobState.queued.value,
        stage=f"requeued ({silent})",
    ):
        out.requeued.append(job.id)


def reap(
    sessions: sessionmaker[Session], settings: Settings, queue: JobQueue | None = None
) -> Reaped:
    """Requeue, fail or end the jobs whose worker died; enqueue the requeued ones."""
    out = Reaped()
    cutoff = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
    with session_scope(sessions) as session:
        active = (JobState.running, JobState.cancelling)
        stmt = select(Job.id, Job.state, Job.attempts).where(Job.state.in_(active), _stale(cutoff))
        for job in session.execute(stmt).all():
            _reap_one(session, job, settings, cutoff, out)
    for job_id in out.requeued:
        _enqueue_or_fail(sessions, queue or JobQueue(settings), job_id)
    if out.requeued or out.failed or out.cancelled:
        log.warning("reaper: requeued %s, failed %s, cancelled %s", *vars(out).values())
    return out


def _enqueue_or_fail(sessions: sessionmaker[Session], queue: JobQueue, job_id: str) -> None:
    try:
        queue.enqueue(job_id)
    except Exception as exc:
        log.exception("reaper: could not enqueue job %s", job_id)
        with session_scope(sessions) as session:
            stmt = update(Job).where(Job.id == job_id, Job.state == JobState.queued)
            error = f"worker lost and could not requeue: {type(exc).__name__}"
            session.execute(
                stmt.values(state=JobState.failed.value, error=error, finished_at=utcnow())
            )


# --- running it -------------------------------------------------------------------


class Periodic:
    """Call ``tick`` every ``interval_s`` on a daemon thread until :meth:`stop`."""

    def __init__(self, name: str, interval_s: float) -> None:
        self.name = name
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a database blip must not kill the heartbeat
                log.exception("%s: tick failed", self.name)
            self._stop.wait(self.interval_s)


class ReaperThread(Periodic):
    """The reaper and the sweeper every ``reaper_interval_s`` (the API runs one, so do
    workers); the first tick runs at startup."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, queue: JobQueue
    ) -> None:
        super().__init__("reaper", settings.reaper_interval_s)
        self.sessions = sessions
        self.settings = settings
        self.queue = queue

    def tick(self) -> None:
        reap(self.sessions, self.settings, self.queue)
        sweep(self.sessions, self.settings)
