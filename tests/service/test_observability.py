"""Prometheus /metrics, X-Request-ID and JSON logs with request and job ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service import logs, reaper
from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from service.main import create_app
from tests.service.support import QueueSize, npz_bytes, tiny_images, upload


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def test_metrics_count_requests_jobs_queue_and_workers(
    client: TestClient, settings: Settings, tmp_path: Path, queue_size: QueueSize
) -> None:
    dataset_id = upload(client, npz_bytes(*tiny_images(), tmp_path)).json()["id"]
    job_ids = [
        client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"}).json()["id"]
        for _ in range(3)
    ]
    sessions = get_sessionmaker(settings.database_url)
    with session_scope(sessions) as session:
        repo.mark_job_running(session, job_ids[0], "test")
        repo.replace_scores(session, job_ids[0], np.zeros(60), np.zeros(60, dtype=bool))
        repo.mark_job_succeeded(session, job_ids[0], {}, None)
        reaper.beat_worker(session, "host:1")
    for _ in range(2):
        assert client.get("/jobs/nope").status_code == 404

    m = samples(client)

    route = (("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "404"))
    assert m[("poisonscan_http_requests_total", route)] == 2
    assert m[("poisonscan_jobs", (("state", "queued"),))] == 2
    assert m[("poisonscan_jobs", (("state", "succeeded"),))] == 1
    assert m[("poisonscan_jobs", (("state", "failed"),))] == 0
    assert m[("poisonscan_job_duration_seconds_count", ())] == 1
    assert m[("poisonscan_workers_alive", ())] == 1
    assert m[("poisonscan_worker_heartbeat_age_seconds", (("worker", "host:1"),))] < 30
    assert m[("poisonscan_queue_depth", (("queue", "gpu"),))] == queue_size("gpu") == 3


def test_request_id_is_kept_or_made_and_echoed(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    made = client.get("/healthz")
    bad = client.get("/healthz", headers={"X-Request-ID": "no spaces allowed"})

    assert given.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32
    assert bad.headers["x-request-id"] != "no spaces allowed"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The JSON handler of :func:`service.logs.configure`, writing to a buffer."""
    stream = io.StringIO()
    handler = logs.json_handler()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_logs_carry_the_request_id(settings: Settings, json_log: io.StringIO) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down), raise_server_exceptions=False) as client:
        resp = client.get("/readyz", headers={"X-Request-ID": "req-42"})

    assert resp.status_code == 503
    lines = [r for r in records(json_log) if str(r["message"]).startswith("readiness: broker")]
    assert lines and lines[0]["request_id"] == "req-42"
    assert lines[0]["level"] == "WARNING"


def test_json_logs_carry_the_job_id(settings: Settings, json_log: io.StringIO) -> None:
    from worker import jobs

    assert jobs.run_job("no-such-job", settings) == "missing"

    lines = [r for r in records(json_log) if "does not exist" in str(r["message"])]
    assert lines and lines[0]["job_id"] == "no-such-job"
