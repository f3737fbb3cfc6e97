"""``poisonscan serve --with-worker``: SIGTERM stops the API and its worker."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_embedded import _free_port
from tests.worker.support import background


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigterm_stops_the_api_and_its_worker(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "POISONSCAN_DATA_DIR": str(tmp_path / "data")}
    for name in ("POISONSCAN_DATABASE_URL", "POISONSCAN_BROKER_URL", "POISONSCAN_STORAGE_DIR"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "poisonscan", "serve", "--with-worker", "--port", str(port)]
    with background(cmd, env, tmp_path / "serve.log", lambda t: "Uvicorn running on" in t) as proc:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        workers = _children(proc.pid)
        assert workers and all(_alive(p) for p in workers)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers), (tmp_path / "serve.log").read_text()[-3000:]
