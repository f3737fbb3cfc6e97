"""A real Celery worker runs jobs end to end on SQLite + SQLite broker and Postgres + Redis."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.config import Settings
from service.db import get_sessionmaker, session_scope
from tests.service.support import QueueSize, npz_bytes, upload
from tests.worker.support import (
    Planted,
    celery_worker,
    planted_digits,
    set_params,
    wait_for,
    wait_for_state,
)
from worker import jobs

JOB_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def planted() -> Planted:
    return planted_digits(rate=0.05, target=0, seed=0)


@pytest.fixture
def dataset_id(client: TestClient, planted: Planted, tmp_path: Path) -> str:
    resp = upload(client, npz_bytes(planted.x, planted.labels, tmp_path), name="digits-badnet")
    assert resp.status_code == 201, resp.text
    dataset: str = resp.json()["id"]
    return dataset


def post_ss_job(
    client: TestClient, dataset_id: str, planted: Planted, **params: Any
) -> dict[str, Any]:
    body = {
        "dataset_id": dataset_id,
        "method": "ss",
        "params": params,
        "ground_truth_poison_indices": planted.poison_indices.tolist(),
    }
    resp = client.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job: dict[str, Any] = resp.json()
    return job


def count_rows(settings: Settings, job_id: str) -> int:
    """``SELECT count(*)`` on the real database (PostgreSQL or SQLite)."""
    with get_sessionmaker(settings.database_url)() as session:
        sql = text("SELECT count(*) FROM sample_score WHERE job_id = :job_id")
        return int(session.execute(sql, {"job_id": job_id}).scalar_one())


def all_pages(client: TestClient, job_id: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 500, **params} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"/jobs/{job_id}/scores", params=query).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


@pytest.mark.slow
def test_worker_runs_a_spectral_job_end_to_end(
    client: TestClient,
    settings: Settings,
    planted: Planted,
    dataset_id: str,
    queue_size: QueueSize,
    tmp_path: Path,
) -> None:
    n = planted.labels.size
    job = post_ss_job(client, dataset_id, planted, budget=0.3, base_model={"epochs": 6})
    assert queue_size("gpu") == 1

    with celery_worker(settings, tmp_path / "worker.log"):
        done = wait_for_state(client, job["id"], {"succeeded", "failed"}, JOB_TIMEOUT_S)

    assert done["state"] == "succeeded", done["error"]
    assert (done["stage"], done["progress"], done["attempts"]) == ("done", 1.0, 1)
    assert done["started_at"] <= done["finished_at"]
    assert done["summary"]["n_samples"] == n
    assert done["metrics"]["n_poison"] == planted.poison_indices.size
    assert done["metrics"]["tpr"] >= 0.8
    assert queue_size("gpu") == 0

    items = all_pages(client, job["id"])
    assert [it["rank"] for it in items] == list(range(1, n + 1))
    assert sorted(it["sample_index"] for it in items) == list(range(n))
    assert np.all(np.diff([it["score"] for it in items]) <= 0)
    flagged = all_pages(client, job["id"], flagged=True)
    assert len(flagged) == done["summary"]["n_flagged"] == done["metrics"]["n_flagged"]
    assert all(it["flagged"] for it in flagged)

    csv = pacsv.read_csv(io.BytesIO(client.get(f"/jobs/{job['id']}/scores.csv").content))
    parquet = pq.read_table(io.BytesIO(client.get(f"/jobs/{job['id']}/scores.parquet").content))
    assert csv.num_rows == parquet.num_rows == n
    assert count_rows(settings, job["id"]) == n

    # A redelivered message for a finished job is a no-op.
    assert jobs.run_job(job["id"], settings) == "succeeded"
    assert count_rows(settings, job["id"]) == n
    assert client.get(f"/jobs/{job['id']}").json()["attempts"] == 1


@pytest.mark.slow
def test_cancel_stops_a_running_job(
    client: TestClient,
    settings: Settings,
    planted: Planted,
    dataset_id: str,
    queue_size: QueueSize,
    tmp_path: Path,
) -> None:
    # An MLP base model takes thousands of quick steps, so cancellation polls come often.
    long_run = {"arch": "mlp", "epochs": 400, "batch_size": 16}

    with celery_worker(settings, tmp_path / "worker.log"):
        job = post_ss_job(client, dataset_id, planted, base_model=long_run)
        training = wait_for(
            client, job["id"], lambda j: (j["stage"] or "").startswith("base_model"), 120
        )
        assert queue_size("cpu") == 0  # a gpu message is not copied into the cpu queue
        asked = time.monotonic()
        cancel = client.post(f"/jobs/{job['id']}/cancel")
        done = wait_for_state(client, job["id"], {"cancelled", "failed", "succeeded"}, 60)
        latency = time.monotonic() - asked

    assert training["state"] == "running"
    assert 0.0 < training["progress"] < 0.5
    assert (cancel.status_code, cancel.json()["state"]) == (202, "cancelling")
    assert done["state"] == "cancelled"
    assert latency < 15.0  # polled every second, checked every training step
    assert done["finished_at"] is not None
    assert count_rows(settings, job["id"]) == 0
    assert client.get(f"/jobs/{job['id']}/scores").status_code == 409
    assert not (settings.storage_root / "jobs" / job["id"]).exists()  # scratch removed


def _set_state(settings: Settings, job_id: str, state: str) -> None:
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        session.execute(text("UPDATE job SET state = :s WHERE id = :j"), {"s": state, "j": job_id})


def test_retry_of_a_running_job_rewrites_the_same_rows(
    client: TestClient, settings: Settings, planted: Planted, dataset_id: str
) -> None:
    torch.set_num_threads(2)
    n = planted.labels.size
    job = post_ss_job(client, dataset_id, planted, base_model={"epochs": 0.25, "width": 8})

    first = jobs.run_job(job["id"], settings)
    _set_state(settings, job["id"], "running")  # as if the worker died before the ack
    second = jobs.run_job(job["id"], settings)

    assert (first, second) == ("succeeded", "succeeded")
    assert count_rows(settings, job["id"]) == n
    again = client.get(f"/jobs/{job['id']}").json()
    assert (again["state"], again["attempts"]) == ("succeeded", 2)
    assert len(all_pages(client, job["id"])) == n


def test_a_detector_error_fails_the_job_without_scores(
    client: TestClient, settings: Settings, planted: Planted, dataset_id: str
) -> None:
    job = post_ss_job(client, dataset_id, planted)
    # A stored row the API now refuses at POST (clean_fpr without a clean reserve),
    # e.g. from an older version: the detector raises while the job runs.
    set_params(settings, job["id"], threshold="clean_fpr")

    state = jobs.run_job(job["id"], settings)

    failed = client.get(f"/jobs/{job['id']}").json()
    assert state == failed["state"] == "failed"
    assert "reserve" in failed["error"]
    assert "\n" not in failed["error"]
    assert count_rows(settings, job["id"]) == 0


def test_a_cancelled_queued_job_never_runs(
    client: TestClient, settings: Settings, planted: Planted, dataset_id: str
) -> None:
    job = post_ss_job(client, dataset_id, planted)
    assert client.post(f"/jobs/{job['id']}/cancel").json()["state"] == "cancelled"

    assert jobs.run_job(job["id"], settings) == "cancelled"
    after = client.get(f"/jobs/{job['id']}").json()
    assert (after["state"], after["attempts"], after["started_at"]) == ("cancelled", 0, None)
