"""Dead-job recovery: heartbeats, the reaper, and a worker killed with SIGKILL mid-job."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service import reaper
from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from service.main import create_app
from service.models import Job, utcnow
from tests.service.support import QueueSize, npz_bytes, upload
from tests.worker.support import (
    Planted,
    celery_worker,
    planted_digits,
    settings_env,
    wait_for,
    wait_for_state,
)
from tests.worker.test_worker import count_rows

FAST = {
    "heartbeat_interval_s": 0.3,
    "heartbeat_timeout_s": 3.0,
    "reaper_interval_s": 0.5,
}


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(update=FAST)


@pytest.fixture
def api(fast: Settings) -> Iterator[TestClient]:
    """The API with its reaper thread running (as ``poisonscan serve`` runs it)."""
    with TestClient(create_app(fast), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def planted() -> Planted:
    return planted_digits(rate=0.05, target=0, seed=0)


@pytest.fixture
def dataset_id(api: TestClient, planted: Planted, tmp_path: Path) -> str:
    resp = upload(api, npz_bytes(planted.x, planted.labels, tmp_path))
    assert resp.status_code == 201, resp.text
    ds: str = resp.json()["id"]
    return ds


def post_job(client: TestClient, dataset_id: str, **params: Any) -> str:
    resp = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss", "params": params})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["id"]
    return job_id


def set_job(settings: Settings, job_id: str, **values: Any) -> None:
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def stale(settings: Settings) -> Any:
    return utcnow() - timedelta(seconds=settings.heartbeat_timeout_s + 1)


def test_reaper_requeues_fails_and_ends_jobs_of_dead_workers(
    fast: Settings, api: TestClient, dataset_id: str, queue_size: QueueSize
) -> None:
    ids = {name: post_job(api, dataset_id) for name in ("dead", "spent", "cancel", "alive")}
    before = queue_size("gpu")
    set_job(fast, ids["dead"], state="running", attempts=1, heartbeat_at=stale(fast))
    set_job(fast, ids["spent"], state="running", attempts=3, heartbeat_at=stale(fast))
    set_job(fast, ids["cancel"], state="cancelling", attempts=1, heartbeat_at=stale(fast))
    set_job(fast, ids["alive"], state="running", attempts=1, heartbeat_at=utcnow())

    out = reaper.reap(get_sessionmaker(fast.database_url), fast)

    assert (out.requeued, out.failed, out.cancelled) == (
        [ids["dead"]],
        [ids["spent"]],
        [ids["cancel"]],
    )
    jobs = {name: api.get(f"/jobs/{job_id}").json() for name, job_id in ids.items()}
    assert jobs["dead"]["state"] == "queued" and "worker lost" in jobs["dead"]["stage"]
    assert jobs["spent"]["state"] == "failed" and "after 3 attempts" in jobs["spent"]["error"]
    assert jobs["cancel"]["state"] == "cancelled" and jobs["cancel"]["finished_at"]
    assert jobs["alive"]["state"] == "running"
    assert queue_size("gpu") == before + 1  # the requeued job was enqueued again
    assert reaper.reap(get_sessionmaker(fast.database_url), fast).requeued == []


def test_a_message_for_a_job_on_a_live_worker_is_dropped(
    fast: Settings, api: TestClient, dataset_id: str
) -> None:
    from worker import jobs

    job_id = post_job(api, dataset_id)
    set_job(fast, job_id, state="running", attempts=1, heartbeat_at=utcnow())

    assert jobs.run_job(job_id, fast) == "running"
    with get_sessionmaker(fast.database_url)() as session:
        job = repo.get_job(session, job_id)
        assert job is not None and job.attempts == 1


@pytest.mark.slow
def test_sigkilled_worker_job_is_requeued_and_finishes(
    fast: Settings, api: TestClient, dataset_id: str, planted: Planted, tmp_path: Path
) -> None:
    env = settings_env(fast) | {f"POISONSCAN_{k.upper()}": str(v) for k, v in FAST.items()}
    long_run = {"arch": "mlp", "epochs": 400, "batch_size": 16}
    job_id = post_job(api, dataset_id, base_model=long_run)

    with celery_worker(fast, tmp_path / "a.log", env=env) as worker_a:
        running = wait_for(api, job_id, lambda j: (j["stage"] or "").startswith("base_model"), 120)
        assert api.get("/readyz").json()["checks"]["workers"] == "ok"
        worker_a.kill()  # SIGKILL: no cleanup, no ack, no last words
        killed_at = time.monotonic()
        requeued = wait_for_state(api, job_id, {"queued", "failed"}, 30)
        recovery_s = time.monotonic() - killed_at

    assert running["state"] == "running"
    assert requeued["state"] == "queued", requeued
    assert recovery_s < FAST["heartbeat_timeout_s"] + 3.0
    wait_for(api, job_id, lambda _: api.get("/readyz").json()["status"] == "degraded", 10)

    # The rerun on a fresh worker (made short here) finishes with exactly N rows.
    with session_scope(get_sessionmaker(fast.database_url)) as session:
        job = repo.get_job(session, job_id)
        assert job is not None
        job.params = {**job.params, "base_model": {"epochs": 0.25, "width": 8}}
    with celery_worker(fast, tmp_path / "b.log", env=env):
        done = wait_for_state(api, job_id, {"succeeded", "failed"}, 120)
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert count_rows(fast, job_id) == planted.labels.size


@pytest.mark.slow
def test_sigkilled_worker_job_fails_when_attempts_are_spent(
    fast: Settings, planted: Planted, tmp_path: Path
) -> None:
    one_try = fast.model_copy(update={"max_job_attempts": 1})
    env = settings_env(one_try) | {f"POISONSCAN_{k.upper()}": str(v) for k, v in FAST.items()}
    env["POISONSCAN_MAX_JOB_ATTEMPTS"] = "1"
    with TestClient(create_app(one_try), raise_server_exceptions=False) as api:
        dataset_id = upload(api, npz_bytes(planted.x, planted.labels, tmp_path)).json()["id"]
        long_run = {"arch": "mlp", "epochs": 400, "batch_size": 16}
        job_id = post_job(api, dataset_id, base_model=long_run)
        with celery_worker(one_try, tmp_path / "a.log", env=env) as worker:
            wait_for_state(api, job_id, {"running"}, 120)
            worker.kill()
            done = wait_for_state(api, job_id, {"failed", "queued"}, 30)
    assert done["state"] == "failed"
    assert "worker lost" in done["error"]
