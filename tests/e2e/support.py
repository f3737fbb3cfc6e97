"""A real HTTP server for end-to-end tests: uvicorn in a thread, jobs run in threads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from service.config import Settings
from service.main import create_app
from worker import jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def threaded_app(settings: Settings) -> FastAPI:
    """The API whose queue runs each job in a thread of this process (the worker's code)."""

    def enqueue(job_id: str) -> None:
        threading.Thread(target=jobs.run_job, args=(job_id, settings), daemon=True).start()

    return create_app(settings, enqueue=enqueue)


@contextmanager
def serve(app: FastAPI, timeout_s: float = 20.0) -> Iterator[str]:
    """Serve ``app`` over real HTTP on a free port until the block ends; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
