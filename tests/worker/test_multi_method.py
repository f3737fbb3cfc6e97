"""One job, several methods: one base model, scores per method plus the fused ``ensemble``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.config import Settings
from service.db import get_sessionmaker
from tests.service.support import npz_bytes, upload
from tests.worker.support import Planted, celery_worker, planted_digits, wait_for_state
from worker import jobs

JOB_TIMEOUT_S = 300.0
BASE = {"epochs": 2, "width": 8}


@pytest.fixture(scope="module")
def planted() -> Planted:
    return planted_digits(rate=0.05, target=0, seed=0)


@pytest.fixture
def dataset_id(client: TestClient, planted: Planted, tmp_path: Path) -> str:
    resp = upload(client, npz_bytes(planted.x, planted.labels, tmp_path), name="digits-badnet")
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def post_multi_job(client: TestClient, dataset_id: str, planted: Planted) -> dict[str, Any]:
    body = {
        "dataset_id": dataset_id,
        "methods": ["ss", "ac"],
        "params": {"ss": {"budget": 0.1, "base_model": BASE}, "ac": {"base_model": BASE}},
        "ground_truth_poison_indices": planted.poison_indices.tolist(),
    }
    resp = client.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job: dict[str, Any] = resp.json()
    return job


def rows_per_method(settings: Settings, job_id: str) -> dict[str, int]:
    with get_sessionmaker(settings.database_url)() as session:
        sql = text("SELECT method, count(*) FROM sample_score WHERE job_id = :j GROUP BY method")
        return {str(m): int(c) for m, c in session.execute(sql, {"j": job_id})}


def export_rows(client: TestClient, job_id: str, method: str | None) -> list[dict[str, Any]]:
    params = {} if method is None else {"method": method}
    resp = client.get(f"/jobs/{job_id}/scores.ndjson", params=params)
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines()]


def check_finished_job(
    client: TestClient, settings: Settings, planted: Planted, job_id: str
) -> None:
    n = planted.labels.size
    done = client.get(f"/jobs/{job_id}").json()
    assert done["state"] == "succeeded", done["error"]
    assert rows_per_method(settings, job_id) == {"ss": n, "ac": n, "ensemble": n}

    per_method = done["summary"]["methods"]
    assert set(per_method) == set(done["score_methods"]) == {"ss", "ac", "ensemble"}
    for entry in per_method.values():
        assert {"n_flagged", "seconds", "tpr", "fpr", "auroc"} <= set(entry)
        assert entry["seconds"] >= 0.0
    # One base model for both detectors: trained once, reused once.
    assert done["summary"]["model_cache"] == {"trained": 1, "reused": 1}
    assert done["metrics"]["tpr"] == per_method["ss"]["tpr"]  # the default: the first method
    assert done["summary"]["n_flagged"] == per_method["ss"]["n_flagged"]

    rows = {m: export_rows(client, job_id, m) for m in ("ss", "ac", "ensemble", None)}
    scores = {m: np.array([r["score"] for r in rs]) for m, rs in rows.items()}
    assert all(s.size == n for s in scores.values())
    assert not np.array_equal(scores["ss"], scores["ac"])
    assert scores["ensemble"].min() > 0.0 and scores["ensemble"].max() <= 1.0
    assert sum(r["flagged"] for r in rows["ensemble"]) == per_method["ensemble"]["n_flagged"]
    assert rows[None] == rows["ss"]  # no method: the first listed
    top = client.get(f"/jobs/{job_id}/scores", params={"method": "ac", "limit": 1}).json()
    assert top["items"][0]["sample_index"] == int(np.argmax(scores["ac"]))
    bad = client.get(f"/jobs/{job_id}/scores", params={"method": "spectre"})
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")


def test_a_multi_method_job_runs_in_process(
    client: TestClient, settings: Settings, planted: Planted, dataset_id: str
) -> None:
    torch.set_num_threads(2)
    job = post_multi_job(client, dataset_id, planted)

    assert jobs.run_job(job["id"], settings) == "succeeded"

    check_finished_job(client, settings, planted, job["id"])
    # A retry rewrites the same rows of every method.
    with get_sessionmaker(settings.database_url)() as session, session.begin():
        session.execute(text("UPDATE job SET state = 'running' WHERE id = :j"), {"j": job["id"]})
    assert jobs.run_job(job["id"], settings) == "succeeded"
    n = planted.labels.size
    assert rows_per_method(settings, job["id"]) == {"ss": n, "ac": n, "ensemble": n}


@pytest.mark.slow
def test_a_real_worker_runs_ss_and_ac_in_one_job(
    client: TestClient, settings: Settings, planted: Planted, dataset_id: str, tmp_path: Path
) -> None:
    job = post_multi_job(client, dataset_id, planted)

    with celery_worker(settings, tmp_path / "worker.log"):
        done = wait_for_state(client, job["id"], {"succeeded", "failed"}, JOB_TIMEOUT_S)

    assert done["state"] == "succeeded", done["error"]
    assert (done["stage"], done["progress"]) == ("done", 1.0)
    check_finished_job(client, settings, planted, job["id"])
