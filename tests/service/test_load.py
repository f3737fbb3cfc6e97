"""200 concurrent pollers against a real uvicorn server: 200 or 503, never a lock-up."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import pytest

from poisonscan.bench.load import run_level
from poisonscan.bench.rawhttp import IDLE_EXPIRY_S
from poisonscan.runtime import free_port
from service.config import Settings
from tests.service.support import npz_bytes, tiny_images
from tests.worker.support import background, settings_env


@pytest.mark.slow
def test_200_pollers_get_200_or_503_and_healthz_stays_responsive(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    env = settings_env(settings) | {"POISONSCAN_API_MAX_INFLIGHT": "16"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_served_app"]
    cmd += ["--port", str(port), "--no-access-log"]
    url = f"http://127.0.0.1:{port}"
    ready = background(cmd, env, tmp_path / "api.log", lambda t: "Uvicorn running on" in t)
    limits = httpx.Limits(keepalive_expiry=IDLE_EXPIRY_S)  # idle through the level
    with ready, httpx.Client(base_url=url, timeout=30, limits=limits) as client:
        files = {"file": ("a.npz", npz_bytes(*tiny_images(), tmp_path))}
        dataset_id = client.post("/datasets", files=files).json()["id"]
        job = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"}).json()

        started = time.monotonic()
        result = asyncio.run(run_level(url, f"/jobs/{job['id']}", 200, 3.0))
        elapsed = time.monotonic() - started

        after = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        healthz_after_s = time.perf_counter() - after

    # Every answer is 200 or 503 (back-pressure), and no exchange fails. The one ReadError
    # once seen here (httpx pollers) fits the keep-alive race, reproduced on purpose: a
    # request sent on an idle connection just as uvicorn closes it. The bench's clients now
    # drop idle connections well before uvicorn's 5 s keep-alive timeout.
    assert set(result.statuses) <= {"200", "503"}, result.statuses
    assert result.statuses["200"] > 0
    assert elapsed < 15.0  # every poller finished its last request soon after the 3 s
    # The probe shares the client's event loop with 200 pollers (2 shared cores): a loose bound
    # here, a strict one once the load stops (the lock-up kept /healthz away for ~90 s).
    assert max(result.healthz_s) < 5.0
    assert healthz_after_s < 0.5
