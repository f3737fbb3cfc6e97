"""/healthz, /readyz and the problem+json shape of unexpected errors."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.service.support import npz_bytes, tiny_images, upload

PROBLEM = "application/problem+json"


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}


def test_readyz_checks_database_and_broker(client: TestClient) -> None:
    resp = client.get("/readyz")

    assert resp.status_code == 200, resp.text
    assert resp.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "none alive"}
    assert resp.json()["status"] == "degraded"  # no worker heartbeat yet


def _unreachable(settings: Settings, **changes: str) -> TestClient:
    return TestClient(
        create_app(settings.model_copy(update=changes)), raise_server_exceptions=False
    )


def test_readyz_is_503_when_the_broker_is_down(settings: Settings) -> None:
    with _unreachable(settings, broker_url="redis://127.0.0.1:1/0") as client:
        resp = client.get("/readyz")

    assert resp.status_code == 503
    assert resp.headers["content-type"] == PROBLEM
    assert resp.json()["detail"] == "unavailable: broker"


def test_readyz_is_503_when_the_database_is_down(settings: Settings) -> None:
    dead_db = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    with _unreachable(settings, database_url=dead_db) as client:
        resp = client.get("/readyz")

    assert resp.status_code == 503
    assert resp.json()["detail"] == "unavailable: database"


def test_enqueue_failure_marks_the_job_failed(settings: Settings, tmp_path: Path) -> None:
    with _unreachable(settings, broker_url="redis://127.0.0.1:1/0") as client:
        dataset_id = upload(client, npz_bytes(*tiny_images(), tmp_path)).json()["id"]
        resp = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"})
        jobs = client.get("/jobs").json()["items"]

    assert resp.status_code == 503
    assert resp.headers["content-type"] == PROBLEM
    assert [j["state"] for j in jobs] == ["failed"]
    assert jobs[0]["error"].startswith("could not enqueue")


def test_unknown_route_is_a_problem(client: TestClient) -> None:
    resp = client.get("/nowhere")

    assert resp.status_code == 404
    assert resp.headers["content-type"] == PROBLEM
    assert resp.json()["instance"] == "/nowhere"


def test_database_down_is_a_503_problem_without_internals(settings: Settings) -> None:
    dead_db = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    with _unreachable(settings, database_url=dead_db) as client:
        resp = client.get("/jobs")

    assert resp.status_code == 503
    assert resp.headers["content-type"] == PROBLEM
    assert resp.headers["retry-after"] == "5"
    assert resp.json() == {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "the database is unavailable or busy; retry later",
        "instance": "/jobs",
    }
