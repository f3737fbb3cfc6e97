"""The embedded deployment over real HTTP: uvicorn + a Celery worker, no servers.

Only ``POISONSCAN_DATA_DIR`` is set, so the defaults are what runs: a SQLite
database, Celery's SQLite broker and local storage, all under that directory.
"""

from __future__ import annotations

import io
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.csv as pacsv
import pytest

from service.config import Settings
from tests.service.support import alembic_upgrade, npz_bytes
from tests.worker.support import background, celery_worker, planted_digits, settings_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[httpx.Client, Settings]]:
    settings = Settings(data_dir=tmp_path / "data")
    alembic_upgrade(settings.database_url)
    derived = ("POISONSCAN_DATABASE_URL", "POISONSCAN_BROKER_URL", "POISONSCAN_STORAGE_DIR")
    env = {k: v for k, v in settings_env(settings).items() if k not in derived}
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with (
        background(cmd, env, tmp_path / "api.log", lambda t: "Uvicorn running on" in t),
        celery_worker(settings, tmp_path / "worker.log", env),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        yield client, settings


def _wait(client: httpx.Client, job_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")


@pytest.mark.slow
def test_embedded_defaults_run_a_job_over_http(
    embedded: tuple[httpx.Client, Settings], tmp_path: Path
) -> None:
    client, settings = embedded
    planted = planted_digits(rate=0.05)
    data = npz_bytes(planted.x, planted.labels, tmp_path)

    ready = client.get("/readyz")
    created = client.post("/datasets", files={"file": ("digits.npz", io.BytesIO(data))})
    body = {
        "dataset_id": created.json()["id"],
        "method": "ss",
        "params": {"base_model": {"arch": "mlp", "epochs": 2}},
        "ground_truth_poison_indices": planted.poison_indices.tolist(),
    }
    posted = client.post("/jobs", json=body)
    job = _wait(client, posted.json()["id"], 240)
    csv = client.get(f"/jobs/{job['id']}/scores.csv")

    assert ready.status_code == 200, ready.text
    assert created.status_code == 201, created.text
    assert posted.status_code == 202, posted.text
    assert job["state"] == "succeeded", job["error"]
    assert set(job["metrics"]) >= {"tpr", "fpr", "auroc"}
    table = pacsv.read_csv(io.BytesIO(csv.content))
    assert table.num_rows == planted.labels.size
    np.testing.assert_array_equal(
        np.sort(table["rank"].to_numpy()), np.arange(1, table.num_rows + 1)
    )
    data_dir = settings.data_dir.resolve()
    assert (data_dir / "poisonscan.sqlite3").is_file()
    assert (data_dir / "broker.sqlite3").is_file()
    sha = created.json()["sha256"]
    assert (data_dir / "storage" / sha[:2] / f"{sha}.npz").is_file()
