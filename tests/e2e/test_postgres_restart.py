"""PostgreSQL restarts during a job: the job finishes, the API answers 503 then 200 again.

The test starts its own PostgreSQL cluster (initdb + pg_ctl on a free port in a
temporary directory) and restarts only that one; the shared server on 5432 is
never touched. API (``poisonscan serve``) and worker (Celery) are real processes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import text

from service.config import Settings
from service.db import get_sessionmaker
from tests.e2e.test_embedded import _free_port
from tests.service.support import alembic_upgrade, npz_bytes
from tests.worker import support as worker_support
from tests.worker.support import background, celery_worker, planted_digits, settings_env

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


@dataclass
class Cluster:
    """A private PostgreSQL cluster run by ``pg_ctl`` (as ``postgres`` when we are root)."""

    bin_dir: Path
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/poisonscan"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data_dir / "pg"), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1"
        log = str(self.data_dir / "pg.log")
        self._run("pg_ctl", "-D", str(self.data_dir / "pg"), "-o", opts, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir / "pg"), "-m", "fast", "-w", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not BINARIES or (os.geteuid() == 0 and not shutil.which("runuser")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    data_dir = Path(tempfile.mkdtemp(prefix="poisonscan-pg-"))
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(data_dir, pg.pw_uid, pg.pw_gid)
    c = Cluster(Path(BINARIES[-1]), data_dir, _free_port())
    c.init()
    c.start()
    try:
        with psycopg.connect(
            f"host=127.0.0.1 port={c.port} user=postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE poisonscan")
        yield c
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            c.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _wait(url: str, ok: set[int], timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            resp = httpx.get(url, timeout=10)
            if resp.status_code in ok or time.monotonic() > deadline:
                return resp
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


@pytest.mark.slow
def test_postgres_restarts_during_a_job(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_support, "READY_TIMEOUT_S", 400.0)
    alembic_upgrade(cluster.url)
    settings = Settings(
        data_dir=tmp_path,
        database_url=cluster.url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
        storage_dir=tmp_path / "storage",
        progress_interval_s=0.2,
        cancel_poll_interval_s=0.2,
    )
    planted = planted_digits(rate=0.05, target=0, seed=0)
    n = planted.labels.size
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "poisonscan", "serve", "--port", str(port)]
    ready = lambda t: "Uvicorn running on" in t  # noqa: E731
    env = settings_env(settings)
    with (
        background(cmd, env, tmp_path / "api.log", ready),
        celery_worker(settings, tmp_path / "worker.log"),
    ):
        files = {"file": ("digits.npz", npz_bytes(planted.x, planted.labels, tmp_path))}
        ds = httpx.post(f"{api}/datasets", files=files, timeout=60).json()["id"]
        # Long enough to outlast the restart (seconds), short on a loaded 2-core machine.
        long_run = {"arch": "mlp", "epochs": 12, "batch_size": 32}
        body = {"dataset_id": ds, "method": "ss", "params": {"base_model": long_run}}
        job = httpx.post(f"{api}/jobs", json=body, timeout=30).json()
        running = _wait(f"{api}/jobs/{job['id']}", {200}, 300)
        deadline = time.monotonic() + 300
        while running.json()["state"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.3)
            running = httpx.get(f"{api}/jobs/{job['id']}", timeout=10)

        cluster.stop()
        down = httpx.get(f"{api}/jobs/{job['id']}", timeout=30)
        time.sleep(3.0)  # the worker's progress writes and heartbeats fail meanwhile
        cluster.start()

        back = _wait(f"{api}/jobs/{job['id']}", {200}, 60)
        done = back.json()
        deadline = time.monotonic() + 600
        while done["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.5)
            done = httpx.get(f"{api}/jobs/{job['id']}", timeout=10).json()
        health = httpx.get(f"{api}/healthz", timeout=10).status_code

    assert running.json()["state"] == "running", running.text
    assert down.status_code == 503, down.text
    assert down.headers["content-type"] == "application/problem+json"
    assert "Retry-After" in down.headers
    assert back.status_code == 200
    assert done["state"] == "succeeded", done["error"]
    assert health == 200
    with get_sessionmaker(cluster.url)() as session:
        sql = text("SELECT count(*) FROM sample_score WHERE job_id = :j")
        assert session.execute(sql, {"j": job["id"]}).scalar_one() == n
