"""Thin task wrappers: take a job id, call :mod:`worker.jobs`."""

from __future__ import annotations

from service.config import get_settings
from service.queue import RUN_JOB_TASK
from worker import jobs
from worker.celery_app import app


@app.task(name=RUN_JOB_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def run_job(job_id: str) -> str:
    """Run job ``job_id``; returns its final state (the job row holds everything else)."""
    return jobs.run_job(job_id, get_settings())
