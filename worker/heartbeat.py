"""Heartbeats from the worker process, and the reaper that runs beside them.

- :class:`JobHeartbeat` refreshes ``job.heartbeat_at`` while one job runs; a
  SIGKILLed worker stops beating, and the reaper requeues or fails the job.
- :class:`WorkerHeartbeat` keeps this worker's ``worker_heartbeat`` row fresh
  (``/readyz`` counts live workers) and runs :func:`service.reaper.reap` and
  :func:`service.sweeper.sweep` every ``reaper_interval_s``; it starts with the
  Celery worker (``worker_ready``), next to a webhook dispatcher.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from service import reaper, sweeper
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from service.reaper import Periodic

log = logging.getLogger(__name__)


class JobHeartbeat(Periodic):
    """``with JobHeartbeat(...)``: the job's heartbeat is fresh while the block runs."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, interval_s: float) -> None:
        super().__init__(f"heartbeat-{job_id[:8]}", interval_s)
        self.sessions = sessions
        self.job_id = job_id

    def tick(self) -> None:
        with session_scope(self.sessions) as session:
            reaper.beat_job(session, self.job_id)

    def __enter__(self) -> JobHeartbeat:
        self.start()
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        with session_scope(self.sessions) as session:
            reaper.clear_job_heartbeat(session, self.job_id)


class WorkerHeartbeat(Periodic):
    """This worker's liveness row, plus the reaper every ``reaper_interval_s``."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("worker-heartbeat", settings.heartbeat_interval_s)
        self.settings = settings
        self.sessions = get_sessionmaker(settings.database_url)
        self.worker_id = reaper.worker_id()
        self._next_reap = 0.0

    def tick(self) -> None:
        with session_scope(self.sessions) as session:
            reaper.beat_worker(session, self.worker_id)
        if time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + self.settings.reaper_interval_s
            reaper.reap(self.sessions, self.settings)
            sweeper.sweep(self.sessions, self.settings)

    def stop(self) -> None:
        super().stop()
        try:
            with session_scope(self.sessions) as session:
                reaper.remove_worker(session, self.worker_id)
        except Exception:
            log.exception("could not remove the worker heartbeat row")
