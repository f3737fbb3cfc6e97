"""A real Celery worker process for tests, plus a planted-backdoor digits set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from detection.datasets import load_source
from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from tests.service.support import npz_bytes, tiny_images, upload

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
TINY_SS = {"base_model": {"epochs": 1, "batch_size": 16}}  # an ss job of a second or two


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process see the same Settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POISONSCAN_")}
    env |= {
        "POISONSCAN_DATA_DIR": str(settings.data_dir),
        "POISONSCAN_DATABASE_URL": settings.database_url,
        "POISONSCAN_BROKER_URL": settings.broker_url,
        "POISONSCAN_STORAGE_DIR": str(settings.storage_root),
        "POISONSCAN_MAX_UPLOAD_BYTES": str(settings.max_upload_bytes),
        "POISONSCAN_PROGRESS_INTERVAL_S": str(settings.progress_interval_s),
        "POISONSCAN_CANCEL_POLL_INTERVAL_S": str(settings.cancel_poll_interval_s),
        "POISONSCAN_DEVICE": "cpu",
        "OMP_NUM_THREADS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    return env


@contextmanager
def background(
    cmd: list[str], env: Mapping[str, str], log_path: Path, ready: Callable[[str], bool]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` until the block ends; wait until ``ready(log_text)``."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, log_path, ready)
        yield proc
    finally:
        _stop(proc)


def _wait_ready(
    proc: subprocess.Popen[bytes], log_path: Path, ready: Callable[[str], bool]
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if ready(text):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{text[-4000:]}")
        time.sleep(0.25)
    raise TimeoutError(f"not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def celery_worker(
    settings: Settings, log_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A worker.celery_app worker -Q gpu,cpu --pool solo`` on the test's settings."""
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
    cmd += ["-Q", "gpu,cpu", "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO"]
    cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    env = settings_env(settings) if env is None else env
    with background(cmd, env, log_path, lambda t: " ready." in t) as proc:
        yield proc


@dataclass(frozen=True)
class Planted:
    x: NDArray[np.uint8]
    labels: NDArray[np.int64]
    poison_indices: NDArray[np.int64]


def planted_digits(rate: float = 0.05, target: int = 0, seed: int = 0) -> Planted:
    """Real digits (1797 x 16 x 16 x 1); a 3x3 checker patch on ``rate`` of them, relabelled."""
    digits = load_source("digits")
    x, labels = digits.x.copy(), digits.labels.copy()
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(labels != target)
    idx = np.sort(rng.choice(candidates, size=round(rate * labels.size), replace=False))
    x[idx, -3:, -3:, 0] = (np.indices((3, 3)).sum(axis=0) % 2 * 255).astype(np.uint8)
    labels[idx] = target
    return Planted(x, labels, idx.astype(np.int64))


def wait_for(
    client: TestClient, job_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until ``done(job)``."""
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.25)
    state = f"{job.get('state')} ({job.get('stage')}, {job.get('progress')})"
    raise TimeoutError(f"job {job_id} still {state} after {timeout_s} s")


def wait_for_state(
    client: TestClient, job_id: str, states: set[str], timeout_s: float
) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until its state is in ``states``."""
    return wait_for(client, job_id, lambda job: job["state"] in states, timeout_s)


def upload_tiny(client: TestClient, tmp_path: Path, seed: int) -> str:
    """Upload 60 tiny images; the new dataset's id."""
    x, labels = tiny_images(n=60, seed=seed)
    resp = upload(client, npz_bytes(x, labels, tmp_path))
    assert resp.status_code == 201, resp.text
    ds: str = resp.json()["id"]
    return ds


def set_params(settings: Settings, job_id: str, **params: Any) -> None:
    """Change a stored job's params behind the API's back (e.g. to make its detector fail)."""
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        job = repo.get_job(session, job_id)
        assert job is not None
        job.params = {**job.params, **params}
