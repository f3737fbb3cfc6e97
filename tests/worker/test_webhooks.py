"""Webhooks: a real receiver checks the Standard Webhooks signature; retries are logged.

Jobs run through the worker's own code (``worker.jobs.run_job``, and a real Celery
worker process in the slow test); the API's dispatcher thread (or the worker's)
delivers the event.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from standardwebhooks import Webhook

from service.config import Settings
from service.db import get_sessionmaker, session_scope
from service.main import create_app
from service.models import WebhookDelivery
from service.webhooks import message_id, new_secret
from tests.worker.receiver import dead_url, receiver
from tests.worker.support import (
    TINY_SS,
    celery_worker,
    set_params,
    settings_env,
    upload_tiny,
    wait_for_state,
)
from worker import jobs

HOOKS = {
    "webhook_poll_interval_s": 0.1,
    "webhook_backoff_s": 0.05,
    "webhook_backoff_max_s": 0.2,
    "webhook_timeout_s": 2.0,
    "webhook_max_attempts": 3,
}


@pytest.fixture
def hooks(settings: Settings) -> Settings:
    return settings.model_copy(update=HOOKS)


@pytest.fixture
def api(hooks: Settings) -> Iterator[TestClient]:
    """The API with its dispatcher thread running (as ``poisonscan serve`` runs it)."""
    with TestClient(create_app(hooks), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def dataset_id(api: TestClient, tmp_path: Path) -> str:
    return upload_tiny(api, tmp_path, seed=1)


def post_job(client: TestClient, dataset_id: str, url: str, **extra: Any) -> dict[str, Any]:
    body = {"dataset_id": dataset_id, "method": "ss", "params": TINY_SS, "callback_url": url}
    resp = client.post("/jobs", json=body | extra)
    assert resp.status_code == 202, resp.text
    job: dict[str, Any] = resp.json()
    return job


def settled(client: TestClient, job_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """The job once its webhook was delivered or given up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["webhook_state"] in ("delivered", "failed"):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"webhook of job {job_id} still {job['webhook_state']}")


def deliveries(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    resp = client.get(f"/jobs/{job_id}/deliveries")
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def count_deliveries(settings: Settings, job_id: str) -> int:
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        stmt = select(func.count()).where(WebhookDelivery.job_id == job_id)
        return int(session.scalar(stmt) or 0)


def test_a_finished_job_posts_a_signed_event(
    api: TestClient, hooks: Settings, dataset_id: str
) -> None:
    with receiver() as rx:
        job = post_job(api, dataset_id, rx.url, metadata={"run": "r1"})
        secret = rx.secret = job["webhook_secret"]
        assert secret.startswith("whsec_")
        assert job["webhook_state"] == "pending"
        assert "webhook_secret" not in api.get(f"/jobs/{job['id']}").json()
        assert deliveries(api, job["id"]) == []

        assert jobs.run_job(job["id"], hooks) == "succeeded"
        done = settled(api, job["id"])
        (got,) = rx.wait(1)

    assert (done["state"], done["webhook_state"]) == ("succeeded", "delivered")
    assert got.verified, got.headers
    assert got.headers["webhook-id"] == message_id(job["id"], "job.succeeded")
    assert got.headers["webhook-signature"].startswith("v1,")
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    assert Webhook(secret).verify(got.body, got.headers) == got.event
    event = got.event
    assert event["type"] == "job.succeeded"
    assert event["data"]["job_id"] == job["id"]
    assert event["data"]["state"] == "succeeded"
    assert event["data"]["n_samples"] == 60
    assert event["data"]["metadata"] == {"run": "r1"}
    assert event["data"]["links"]["job"] == f"/jobs/{job['id']}"
    # A wrong key does not verify: the signature depends on the secret.
    assert not rx._verify(got.headers, got.body.replace(b"succeeded", b"failed"))

    (row,) = deliveries(api, job["id"])
    assert (row["attempt"], row["status_code"], row["succeeded"]) == (1, 204, True)
    assert row["event_type"] == "job.succeeded"
    assert row["message_id"] == got.headers["webhook-id"]
    assert count_deliveries(hooks, job["id"]) == 1


def test_a_receiver_failing_twice_gets_three_attempts(
    api: TestClient, hooks: Settings, dataset_id: str
) -> None:
    with receiver(statuses=[503, 500]) as rx:
        job = post_job(api, dataset_id, rx.url)
        rx.secret = job["webhook_secret"]
        jobs.run_job(job["id"], hooks)
        done = settled(api, job["id"])
        got = rx.wait(3)

    assert (done["state"], done["webhook_state"]) == ("succeeded", "delivered")
    assert [g.status for g in got] == [503, 500, 204]
    assert all(g.verified for g in got)
    assert len({g.headers["webhook-id"] for g in got}) == 1  # one message, three tries
    rows = deliveries(api, job["id"])
    assert [(r["attempt"], r["status_code"], r["succeeded"]) for r in rows] == [
        (1, 503, False),
        (2, 500, False),
        (3, 204, True),
    ]
    assert rows[0]["error"] == "HTTP 503"
    assert count_deliveries(hooks, job["id"]) == 3


def test_a_dead_url_gets_bounded_attempts_and_the_job_still_succeeds(
    api: TestClient, hooks: Settings, dataset_id: str
) -> None:
    job = post_job(api, dataset_id, dead_url())

    assert jobs.run_job(job["id"], hooks) == "succeeded"
    done = settled(api, job["id"])

    assert (done["state"], done["webhook_state"]) == ("succeeded", "failed")
    rows = deliveries(api, job["id"])
    assert [r["attempt"] for r in rows] == [1, 2, 3]  # webhook_max_attempts
    assert all(r["status_code"] is None and not r["succeeded"] for r in rows)
    assert all("ConnectError" in r["error"] for r in rows)
    time.sleep(0.5)  # the dispatcher does not come back to a settled event
    assert count_deliveries(hooks, job["id"]) == 3
    assert api.get(f"/jobs/{job['id']}/scores").json()["items"]


def test_a_refusing_receiver_is_not_retried(api: TestClient, dataset_id: str) -> None:
    with receiver(statuses=[410]) as rx:
        job = post_job(api, dataset_id, rx.url)
        assert api.post(f"/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
        done = settled(api, job["id"])
        (got,) = rx.wait(1)

    assert (done["state"], done["webhook_state"]) == ("cancelled", "failed")
    assert got.event["type"] == "job.cancelled"
    assert [(r["attempt"], r["status_code"]) for r in deliveries(api, job["id"])] == [(1, 410)]


def test_a_client_secret_signs_the_event(api: TestClient, hooks: Settings, dataset_id: str) -> None:
    secret = new_secret()
    with receiver() as rx:
        rx.secret = secret
        job = post_job(api, dataset_id, rx.url, webhook_secret=secret)
        assert job["webhook_secret"] == secret
        assert api.post(f"/jobs/{job['id']}/cancel").status_code == 200
        settled(api, job["id"])
        (got,) = rx.wait(1)
    assert got.verified


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"callback_url": "ftp://example.com/hook"}, "callback_url"),
        ({"callback_url": "javascript:alert(1)"}, "callback_url"),
        ({"callback_url": "file:///etc/passwd"}, "callback_url"),
        ({"callback_url": "http:///no-host"}, "callback_url"),
        ({"callback_url": "http://example.com:99999/"}, "callback_url"),
        ({"callback_url": "http://example.com/a b"}, "callback_url"),
        ({"callback_url": "https://evil.example.org/hook"}, "callback_url"),
        (
            {"callback_url": "https://hooks.example.com/x", "webhook_secret": "s3cret"},
            "webhook_secret",
        ),
        (
            {"callback_url": "https://hooks.example.com/x", "webhook_secret": "whsec_AAAA"},
            "webhook_secret",
        ),
        ({"webhook_secret": new_secret()}, "webhook_secret"),
    ],
)
def test_bad_callbacks_are_refused(
    hooks: Settings, dataset_id: str, extra: dict[str, Any], field: str
) -> None:
    allow = hooks.model_copy(update={"webhook_allowed_hosts": ["*.example.com", "127.0.0.1"]})
    with TestClient(create_app(allow), raise_server_exceptions=False) as client:
        body = {"dataset_id": dataset_id, "method": "ss", **extra}
        resp = client.post("/jobs", json=body)
        ok = client.post("/jobs", json=body | {"callback_url": "https://hooks.example.com/x"})
        listed = client.get("/jobs").json()["total"]

    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["errors"][0]["loc"] == ["body", field]
    assert ok.status_code in (202, 422)  # the valid URL passes unless the secret is bad
    assert listed == (1 if ok.status_code == 202 else 0)


def test_deliveries_of_a_missing_job_are_404(api: TestClient) -> None:
    resp = api.get("/jobs/nope/deliveries")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"


@pytest.mark.slow
def test_the_worker_process_delivers_a_failed_job(
    hooks: Settings, dataset_id: str, tmp_path: Path
) -> None:
    """No API dispatcher here (no lifespan): the Celery worker's own dispatcher sends it."""
    client = TestClient(create_app(hooks), raise_server_exceptions=False)
    env = settings_env(hooks) | {f"POISONSCAN_{k.upper()}": str(v) for k, v in HOOKS.items()}
    with receiver(statuses=[502]) as rx:
        job = post_job(client, dataset_id, rx.url)
        rx.secret = job["webhook_secret"]
        # Params the API refuses now (clean_fpr without a reserve): the detector raises.
        set_params(hooks, job["id"], threshold="clean_fpr")
        with celery_worker(hooks, tmp_path / "worker.log", env):
            done = wait_for_state(client, job["id"], {"failed", "succeeded"}, 120)
            settled(client, job["id"], timeout_s=60)
        got = rx.wait(2)

    assert done["state"] == "failed"
    assert [g.status for g in got] == [502, 204]
    assert all(g.verified and g.event["type"] == "job.failed" for g in got)
    assert got[0].event["data"]["error"] == done["error"]
