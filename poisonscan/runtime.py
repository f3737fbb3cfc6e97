"""The service's pieces started from this machine: migrations, a worker, the API.

Used by ``poisonscan serve/worker/migrate`` and by the demo, on embedded
defaults (SQLite + a broker that needs no server) unless
``POISONSCAN_DATABASE_URL`` / ``_BROKER_URL`` say otherwise.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def migrate() -> None:
    """``alembic upgrade head`` against the configured database."""
    from service.migrate import upgrade_head

    upgrade_head()


def worker_command(queues: str, concurrency: int) -> list[str]:
    """The argv of a Celery worker consuming ``queues``."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "--pool",
        "solo" if concurrency == 1 else "prefork",
        "--loglevel",
        "INFO",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_api(port: int) -> Iterator[str]:
    """uvicorn in a thread; yields the base URL once the server accepts requests."""
    import uvicorn

    from service.main import create_app

    config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the API did not start within 30 s")
        time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def running_worker(log_path: Path) -> Iterator[None]:
    """A worker subprocess on every queue, its output in ``log_path``; stopped on exit."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            worker_command("gpu,cpu", 1), env=os.environ.copy(), stdout=log, stderr=log
        )
        try:
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
