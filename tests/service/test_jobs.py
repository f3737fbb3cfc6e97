"""POST/GET/DELETE /jobs, /methods and the scores endpoints before success."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from tests.service.support import QueueSize, npz_bytes, tiny_images, upload

PROBLEM = "application/problem+json"


@pytest.fixture
def dataset_id(client: TestClient, tmp_path: Path) -> str:
    resp = upload(client, npz_bytes(*tiny_images(n=60), tmp_path))
    assert resp.status_code == 201
    job_id: str = resp.json()["id"]
    return job_id


def post_job(client: TestClient, dataset_id: str, **body: Any) -> Any:
    return client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss", **body})


def test_create_job_stores_validated_params_and_enqueues_after_commit(
    client: TestClient, dataset_id: str, queue_size: QueueSize
) -> None:
    resp = post_job(client, dataset_id, params={"budget": 0.1}, seed=3)

    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["seed"] == 3
    assert job["params"]["budget"] == 0.1
    # The stored params are the full model dump: defaults are filled in.
    assert job["params"]["base_model"]["epochs"] == 12.0
    assert job["has_ground_truth"] is False
    assert client.get(f"/jobs/{job['id']}").json()["state"] == "queued"
    assert queue_size("gpu") == 1
    assert queue_size("cpu") == 0


def test_unknown_method_is_422_problem(
    client: TestClient, dataset_id: str, queue_size: QueueSize
) -> None:
    resp = client.post("/jobs", json={"dataset_id": dataset_id, "method": "nope"})

    assert resp.status_code == 422
    assert resp.headers["content-type"] == PROBLEM
    body = resp.json()
    assert body["errors"][0]["loc"] == ["body", "method"]
    assert "ss" in body["errors"][0]["ctx"]["expected"]
    assert queue_size("gpu") == 0


def test_bad_params_are_422_with_errors(client: TestClient, dataset_id: str) -> None:
    resp = post_job(client, dataset_id, params={"budget": 2.0, "unknown": 1})

    assert resp.status_code == 422
    assert resp.headers["content-type"] == PROBLEM
    errors = {tuple(e["loc"]): e["type"] for e in resp.json()["errors"]}
    assert errors == {
        ("body", "params", "budget"): "less_than_equal",
        ("body", "params", "unknown"): "extra_forbidden",
    }
    assert client.get("/jobs").json()["total"] == 0


def test_unknown_dataset_is_404(client: TestClient, queue_size: QueueSize) -> None:
    resp = post_job(client, "missing")

    assert resp.status_code == 404
    assert resp.headers["content-type"] == PROBLEM
    assert queue_size("gpu") == 0


def test_ground_truth_is_checked(client: TestClient, dataset_id: str) -> None:
    out_of_range = post_job(client, dataset_id, ground_truth_poison_indices=[0, 60])
    duplicated = post_job(client, dataset_id, ground_truth_poison_indices=[1, 1])
    overlapping = post_job(
        client, dataset_id, ground_truth_poison_indices=[1, 2], ground_truth_cover_indices=[2]
    )
    ok = post_job(
        client, dataset_id, ground_truth_poison_indices=[5, 1], ground_truth_cover_indices=[7]
    )

    assert out_of_range.status_code == duplicated.status_code == overlapping.status_code == 422
    assert out_of_range.json()["errors"][0]["loc"] == ["body", "ground_truth_poison_indices"]
    assert ok.status_code == 202
    assert ok.json()["has_ground_truth"] is True


def test_clean_dataset_must_match(client: TestClient, dataset_id: str, tmp_path: Path) -> None:
    other_classes = upload(client, npz_bytes(*tiny_images(n=40, n_classes=4), tmp_path)).json()
    same_layout = upload(client, npz_bytes(*tiny_images(n=30, seed=9), tmp_path)).json()

    bad = post_job(client, dataset_id, clean_dataset_id=other_classes["id"])
    good = post_job(client, dataset_id, clean_dataset_id=same_layout["id"])

    assert bad.status_code == 422
    assert "same sample shape" in bad.json()["detail"]
    assert good.status_code == 202
    assert good.json()["clean_dataset_id"] == same_layout["id"]


def test_params_that_need_a_clean_reserve_are_refused_without_one(
    client: TestClient, dataset_id: str, tmp_path: Path, queue_size: QueueSize
) -> None:
    clean = upload(client, npz_bytes(*tiny_images(n=30, seed=9), tmp_path)).json()["id"]

    refused = post_job(client, dataset_id, params={"threshold": "clean_fpr"})
    accepted = post_job(
        client, dataset_id, params={"threshold": "clean_fpr"}, clean_dataset_id=clean
    )

    assert refused.status_code == 422
    assert refused.headers["content-type"] == PROBLEM
    assert refused.json()["errors"][0]["loc"] == ["body", "clean_dataset_id"]
    assert accepted.status_code == 202, accepted.text
    assert client.get("/jobs").json()["total"] == 1
    assert queue_size("gpu") == 1


def test_list_jobs_filters_and_pages(client: TestClient, dataset_id: str, tmp_path: Path) -> None:
    other = upload(client, npz_bytes(*tiny_images(seed=5), tmp_path)).json()["id"]
    ids = [post_job(client, dataset_id, seed=s).json()["id"] for s in range(3)]
    ac_job = client.post("/jobs", json={"dataset_id": other, "method": "ac"}).json()["id"]
    client.post(f"/jobs/{ids[0]}/cancel")

    everything = client.get("/jobs").json()
    page = client.get("/jobs", params={"limit": 2, "offset": 2}).json()
    by_method = client.get("/jobs", params={"method": "ac"}).json()
    by_dataset = client.get("/jobs", params={"dataset_id": dataset_id}).json()
    cancelled = client.get("/jobs", params={"state": "cancelled"}).json()
    bad_state = client.get("/jobs", params={"state": "bogus"})

    assert everything["total"] == 4 and len(everything["items"]) == 4
    assert page["total"] == 4 and len(page["items"]) == 2
    assert {j["id"] for j in everything["items"]} == {*ids, ac_job}
    assert [j["id"] for j in by_method["items"]] == [ac_job]
    assert {j["id"] for j in by_dataset["items"]} == set(ids)
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    assert bad_state.status_code == 422


def _set_state(settings: Settings, job_id: str, state: str) -> None:
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        job = repo.get_job(session, job_id)
        assert job is not None
        job.state = state


def test_cancel_transitions(client: TestClient, dataset_id: str, settings: Settings) -> None:
    queued, running, done = (post_job(client, dataset_id, seed=s).json()["id"] for s in range(3))
    _set_state(settings, running, "running")
    _set_state(settings, done, "succeeded")

    r_queued = client.post(f"/jobs/{queued}/cancel")
    r_running = client.post(f"/jobs/{running}/cancel")
    r_again = client.post(f"/jobs/{running}/cancel")
    r_done = client.post(f"/jobs/{done}/cancel")
    r_missing = client.post("/jobs/missing/cancel")

    assert (r_queued.status_code, r_queued.json()["state"]) == (200, "cancelled")
    assert r_queued.json()["finished_at"] is not None
    assert r_running.json()["cancel_requested_at"] is not None
    assert (r_running.status_code, r_running.json()["state"]) == (202, "cancelling")
    assert (r_again.status_code, r_again.json()["state"]) == (202, "cancelling")
    assert r_done.status_code == 409
    assert r_done.headers["content-type"] == PROBLEM
    assert r_missing.status_code == 404
    assert client.get(f"/jobs/{done}").json()["state"] == "succeeded"


def test_scores_are_409_until_the_job_succeeded(client: TestClient, dataset_id: str) -> None:
    job_id = post_job(client, dataset_id).json()["id"]

    for path in ("scores", "scores.csv", "scores.parquet"):
        resp = client.get(f"/jobs/{job_id}/{path}")
        assert resp.status_code == 409, path
        assert resp.headers["content-type"] == PROBLEM
        assert "queued" in resp.json()["detail"]
    assert client.get("/jobs/missing/scores").status_code == 404


def test_methods_lists_registered_detectors_with_schemas(client: TestClient) -> None:
    methods = {m["name"]: m for m in client.get("/methods").json()}

    assert {"ss", "ac", "ct"} <= set(methods)
    assert "Tran" in methods["ss"]["description"]
    assert "budget" in methods["ss"]["params"]["properties"]


def test_image_networks_are_refused_on_feature_data(
    client: TestClient, tmp_path: Path, queue_size: QueueSize
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    features = upload(client, npz_bytes(x, np.arange(60) % 3, tmp_path)).json()["id"]

    nested = post_job(client, features, params={"base_model": {"arch": "small_cnn"}})
    top = client.post(
        "/jobs", json={"dataset_id": features, "method": "ct", "params": {"arch": "resnet18"}}
    )
    fine = post_job(client, features, params={"base_model": {"arch": "mlp"}})

    assert nested.status_code == top.status_code == 422
    assert nested.headers["content-type"] == PROBLEM
    assert nested.json()["errors"][0]["loc"] == ["body", "params", "base_model", "arch"]
    assert top.json()["errors"][0]["loc"] == ["body", "params", "arch"]
    assert fine.status_code == 202
    assert queue_size("gpu") == 1
