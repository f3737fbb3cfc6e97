"""Idempotency keys, job metadata, deletes, per-state timestamps and the ETA."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from service.models import Dataset, DatasetSample, IdempotencyRecord, Job, SampleScore, utcnow
from tests.service.support import (
    QueueSize,
    image_zip,
    npz_bytes,
    stored_files,
    tiny_images,
    upload,
)

PROBLEM = "application/problem+json"


def count(settings: Settings, model: type[Any]) -> int:
    with get_sessionmaker(settings.database_url)() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def dataset_id(client: TestClient, tmp_path: Path) -> str:
    dataset: str = upload(client, npz_bytes(*tiny_images(n=60), tmp_path)).json()["id"]
    return dataset


def post_job(client: TestClient, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/jobs", json=body, headers=headers)


def test_job_idempotency_key_replays_and_refuses_another_body(
    client: TestClient, dataset_id: str, settings: Settings, queue_size: QueueSize
) -> None:
    body = {"dataset_id": dataset_id, "method": "ss", "seed": 1}

    first = post_job(client, body, key="k-1")
    again = post_job(client, body, key="k-1")
    other = post_job(client, body | {"seed": 2}, key="k-1")
    unkeyed = post_job(client, body)

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 409
    assert other.headers["content-type"] == PROBLEM
    assert "different request body" in other.json()["detail"]
    assert unkeyed.json()["id"] != first.json()["id"]
    assert count(settings, Job) == 2
    assert count(settings, IdempotencyRecord) == 1
    assert queue_size("gpu") == 2  # the replay was not enqueued again


def test_dataset_idempotency_key_replays_and_refuses_other_bytes(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    data = npz_bytes(*tiny_images(seed=1), tmp_path)
    other = npz_bytes(*tiny_images(seed=2), tmp_path)
    headers = {"Idempotency-Key": "upload-1"}

    def send(payload: bytes) -> Any:
        files = {"file": ("set.npz", payload, "application/octet-stream")}
        return client.post("/datasets", files=files, headers=headers)

    first, again, conflict = send(data), send(data), send(other)

    assert (first.status_code, again.status_code, conflict.status_code) == (201, 201, 409)
    assert again.json() == first.json()
    assert conflict.headers["content-type"] == PROBLEM
    assert count(settings, Dataset) == 1
    sha = first.json()["sha256"]
    assert stored_files(settings) == [settings.storage_root / sha[:2] / f"{sha}.npz"]


def test_metadata_is_stored_and_bounded(
    client: TestClient, dataset_id: str, settings: Settings
) -> None:
    tags = {"team": "vision", "run": "2026-11-26"}

    ok = post_job(client, {"dataset_id": dataset_id, "method": "ss", "metadata": tags})
    too_many = post_job(
        client,
        {"dataset_id": dataset_id, "method": "ss", "metadata": {f"k{i}": "v" for i in range(33)}},
    )
    not_text = post_job(client, {"dataset_id": dataset_id, "method": "ss", "metadata": {"n": 1}})

    assert ok.status_code == 202
    assert ok.json()["metadata"] == tags
    assert client.get(f"/jobs/{ok.json()['id']}").json()["metadata"] == tags
    with get_sessionmaker(settings.database_url)() as session:
        assert session.get(Job, ok.json()["id"]).job_metadata == tags  # type: ignore[union-attr]
    assert too_many.status_code == not_text.status_code == 422
    assert not_text.json()["errors"][0]["loc"][:3] == ["body", "metadata", "n"]


def _run_for(settings: Settings, job_id: str, seconds: float, progress: float) -> None:
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        job = repo.get_job(session, job_id)
        assert job is not None
        job.state, job.progress = "running", progress
        job.started_at = utcnow() - timedelta(seconds=seconds)


def test_running_job_has_an_eta_and_per_state_timestamps(
    client: TestClient, dataset_id: str, settings: Settings
) -> None:
    job_id = post_job(client, {"dataset_id": dataset_id, "method": "ss"}).json()["id"]
    queued = client.get(f"/jobs/{job_id}").json()
    _run_for(settings, job_id, seconds=30.0, progress=0.25)

    running = client.get(f"/jobs/{job_id}").json()
    cancelling = client.post(f"/jobs/{job_id}/cancel").json()

    assert queued["eta_seconds"] is None and queued["started_at"] is None
    assert running["eta_seconds"] == pytest.approx(90.0, abs=5.0)
    assert running["started_at"] is not None
    assert cancelling["state"] == "cancelling"
    assert cancelling["cancel_requested_at"] is not None
    assert cancelling["eta_seconds"] is None


def _succeed(settings: Settings, job_id: str, n: int) -> None:
    import numpy as np

    with session_scope(get_sessionmaker(settings.database_url)) as session:
        repo.replace_scores(session, job_id, np.linspace(0, 1, n), np.zeros(n, dtype=bool))
        assert repo.mark_job_running(session, job_id, "test")
        assert repo.mark_job_succeeded(session, job_id, {"n_samples": n}, None)


def test_delete_job_and_dataset(client: TestClient, settings: Settings) -> None:
    dataset = upload(client, image_zip(n_per_class=3), filename="pets.zip").json()
    job_id = post_job(client, {"dataset_id": dataset["id"], "method": "ss"}).json()["id"]
    scratch = settings.storage_root / "jobs" / job_id
    scratch.mkdir(parents=True)

    active = client.delete(f"/jobs/{job_id}")
    in_use = client.delete(f"/datasets/{dataset['id']}")
    _succeed(settings, job_id, dataset["n_samples"])
    deleted_job = client.delete(f"/jobs/{job_id}")
    deleted_dataset = client.delete(f"/datasets/{dataset['id']}")

    assert active.status_code == in_use.status_code == 409
    assert active.headers["content-type"] == in_use.headers["content-type"] == PROBLEM
    assert "cancel it first" in active.json()["detail"]
    assert deleted_job.status_code == deleted_dataset.status_code == 204
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(f"/datasets/{dataset['id']}").status_code == 404
    assert client.delete(f"/jobs/{job_id}").status_code == 404
    for model in (Job, SampleScore, Dataset, DatasetSample):
        assert count(settings, model) == 0, model
    assert stored_files(settings) == []
    assert not scratch.exists()
