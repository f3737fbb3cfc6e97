"""Leftovers on disk: staged uploads of a killed API, scratch dirs of ended jobs.

Every failure path inside a live process cleans up after itself; this catches
what a SIGKILL, an OOM or a power cut leaves. The reaper loop runs :func:`sweep`
(its first tick is at startup) in every API process and every worker.

- A staged upload (``storage/tmp``) older than ``staged_max_age_s`` is garbage:
  a live upload is cut off after ``body_timeout_s`` and checked within minutes.
- A job's scratch directory (``storage/jobs/<id>``: CT round checkpoints) is kept
  while the job may run again (queued, running, cancelling) and removed once it
  succeeded, failed, was cancelled or deleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import session_scope
from service.models import FINISHED_STATES, Job
from service.storage import LocalStorage

log = logging.getLogger(__name__)


@dataclass
class Swept:
    staged: int = 0
    scratch: list[str] = field(default_factory=list)


def ended_jobs(session: Session, job_ids: list[str]) -> list[str]:
    """Those of ``job_ids`` that can no longer run: finished, or gone."""
    if not job_ids:
        return []
    rows = session.execute(select(Job.id, Job.state).where(Job.id.in_(job_ids))).all()
    active = {job_id for job_id, state in rows if state not in FINISHED_STATES}
    return [job_id for job_id in job_ids if job_id not in active]


def sweep_scratch(sessions: sessionmaker[Session], storage: LocalStorage) -> list[str]:
    """Remove the scratch directories of ended jobs; their ids."""
    with session_scope(sessions) as session:
        ended = ended_jobs(session, storage.job_scratch_ids())
    for job_id in ended:
        storage.delete_job_scratch(job_id)
    return ended


def sweep(sessions: sessionmaker[Session], settings: Settings) -> Swept:
    """Staged uploads older than ``staged_max_age_s`` and scratch dirs of ended jobs."""
    storage = LocalStorage(settings.storage_root, settings.max_upload_bytes)
    out = Swept(staged=len(storage.sweep_staged(settings.staged_max_age_s)))
    out.scratch = sweep_scratch(sessions, storage)
    if out.staged or out.scratch:
        log.info("sweeper: removed %d staged uploads, scratch of %s", out.staged, out.scratch)
    return out
