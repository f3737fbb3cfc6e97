"""Scratch dirs (CT round checkpoints) go when a job ends; the sweeper catches the rest."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import reaper, sweeper
from service.config import Settings
from service.db import get_sessionmaker
from service.models import utcnow
from service.storage import LocalStorage
from tests.worker.support import TINY_SS, set_params, upload_tiny
from tests.worker.test_reaper import set_job, stale
from worker import jobs


@pytest.fixture
def dataset_id(client: TestClient, tmp_path: Path) -> str:
    return upload_tiny(client, tmp_path, seed=2)


def post_job(client: TestClient, dataset_id: str, **params: Any) -> str:
    body = {"dataset_id": dataset_id, "method": "ss", "params": TINY_SS | params}
    resp = client.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["id"]
    return job_id


def scratch(settings: Settings, job_id: str) -> Path:
    return settings.storage_root / "jobs" / job_id


def plant_checkpoint(settings: Settings, job_id: str) -> Path:
    """A round checkpoint as an earlier attempt of the job would have left it."""
    path = scratch(settings, job_id) / "round_1.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"checkpoint")
    return path


def test_the_worker_removes_scratch_when_a_job_succeeds_fails_or_is_cancelled(
    client: TestClient, settings: Settings, dataset_id: str
) -> None:
    ok, bad, cancelled = (post_job(client, dataset_id) for _ in range(3))
    set_params(settings, bad, threshold="clean_fpr")  # the detector raises
    assert client.post(f"/jobs/{cancelled}/cancel").json()["state"] == "cancelled"
    for job_id in (ok, bad, cancelled):
        plant_checkpoint(settings, job_id)

    states = [jobs.run_job(job_id, settings) for job_id in (ok, bad, cancelled)]

    assert states == ["succeeded", "failed", "cancelled"]
    assert not any(scratch(settings, j).exists() for j in (ok, bad, cancelled))
    assert sorted(os.listdir(settings.storage_root / "jobs")) == []


def test_the_sweeper_removes_scratch_of_ended_jobs_only(
    client: TestClient, settings: Settings, dataset_id: str
) -> None:
    queued, running, ended, reaped = (post_job(client, dataset_id) for _ in range(4))
    set_job(settings, running, state="running", heartbeat_at=utcnow())
    set_job(settings, ended, state="failed")
    # A job whose worker died too often: the reaper fails it; its checkpoints are garbage.
    set_job(settings, reaped, state="running", attempts=3, heartbeat_at=stale(settings))
    gone = "0" * 8 + "-dead-beef-0000-000000000000"  # deleted job: no row at all
    for job_id in (queued, running, ended, reaped, gone):
        plant_checkpoint(settings, job_id)

    sessions = get_sessionmaker(settings.database_url)
    out = reaper.reap(sessions, settings)
    swept = sweeper.sweep(sessions, settings)

    assert out.failed == [reaped]
    assert sorted(swept.scratch) == sorted([ended, reaped, gone])
    assert scratch(settings, queued).exists()  # a requeued job resumes from its checkpoint
    assert scratch(settings, running).exists()
    assert not any(scratch(settings, j).exists() for j in (ended, reaped, gone))


def test_the_sweeper_removes_old_staged_uploads_only(settings: Settings) -> None:
    storage = LocalStorage(settings.storage_root, settings.max_upload_bytes)
    storage.tmp_dir.mkdir(parents=True, exist_ok=True)
    old, fresh = storage.tmp_dir / "tmpold.npz", storage.tmp_dir / "tmpfresh.npz"
    old.write_bytes(b"half an upload")
    fresh.write_bytes(b"an upload in progress")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))

    swept = sweeper.sweep(
        get_sessionmaker(settings.database_url),
        settings.model_copy(update={"staged_max_age_s": 60}),
    )

    assert swept.staged == 1
    assert not old.exists()
    assert fresh.exists()
