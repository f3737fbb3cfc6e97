"""Cost cap at POST /jobs (estimated sample-passes) and the time limits sent with the job."""

from __future__ import annotations

import json
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from service.config import Settings
from service.cost import sample_passes, time_limits
from tests.service.support import npz_bytes, tiny_images, upload


def test_sample_passes_count_epochs_and_iterations() -> None:
    params = {
        "batch_size": 64,
        "pretrain_epochs": [2.0, 3.0],
        "pretrain_min_epochs": [1.0, 1.0],  # a floor, not extra work
        "confusion_iters": [10, 10],
        "base_model": {"epochs": 4.0, "batch_size": 32},
    }
    assert sample_passes(params, 100) == (2 + 3) * 100 + 20 * 64 + 4 * 100


def test_absurd_epochs_are_refused_with_the_estimate(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    dataset_id = upload(client, npz_bytes(*tiny_images(), tmp_path)).json()["id"]
    body = {"dataset_id": dataset_id, "method": "ct", "params": {"pretrain_epochs": [1e9] * 6}}

    resp = client.post("/jobs", json=body)

    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    err = resp.json()["errors"][0]
    assert err["type"] == "cost_cap"
    assert err["ctx"]["estimate"] >= 6e9 * 60
    assert err["ctx"]["cap"] == settings.max_sample_passes
    assert client.get("/jobs").json()["total"] == 0


def test_an_accepted_job_carries_time_limits_from_its_params(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    dataset_id = upload(client, npz_bytes(*tiny_images(), tmp_path)).json()["id"]
    params = {"base_model": {"epochs": 2.0}}
    resp = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss", "params": params})
    assert resp.status_code == 202, resp.text
    if not settings.broker_url.startswith("redis"):
        return  # the SQLite transport's rows are checked by the worker tests
    raw = redis.Redis.from_url(settings.broker_url).lrange("gpu", 0, -1)
    headers = json.loads(raw[0])["headers"]
    soft, hard = time_limits(2.0 * 60, settings)
    assert headers["timelimit"] == [hard, soft]
