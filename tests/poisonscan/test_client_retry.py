"""The client under back-pressure: reads wait out 429/503 (Retry-After), writes do not retry.

A real HTTP server on loopback answers a scripted sequence of statuses.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from poisonscan.client import ApiError, AsyncClient, Client, retry_after_s

JOB = {"id": "j1", "dataset_id": "d1", "method": "ss", "state": "running"}


class Script:
    """Statuses to answer in order (the last one repeats) and the requests seen."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.seen: list[str] = []

    def next_status(self, line: str) -> int:
        self.seen.append(line)
        return self.statuses[min(len(self.seen), len(self.statuses)) - 1]


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script([200])

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            status = script.next_status(f"{self.command} {self.path}")
            body = JOB if status == 200 else {"title": "busy", "status": status}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status != 200:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_read_waits_out_shed_load(server: tuple[str, Script]) -> None:
    url, script = server
    script.statuses = [503, 429, 200]
    with Client(url) as ps:
        assert ps.job("j1").state == "running"
    assert script.seen == ["GET /jobs/j1"] * 3


def test_a_read_gives_up_after_its_retries(server: tuple[str, Script]) -> None:
    url, script = server
    script.statuses = [503]
    with Client(url, retries=2) as ps, pytest.raises(ApiError) as err:
        ps.job("j1")
    assert err.value.status == 503 and len(script.seen) == 3


def test_a_write_is_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.statuses = [503, 200]
    with Client(url) as ps, pytest.raises(ApiError) as err:
        ps.submit("d1", "ss")
    assert err.value.status == 503 and script.seen == ["POST /jobs"]


def test_the_async_client_waits_too(server: tuple[str, Script]) -> None:
    url, script = server
    script.statuses = [503, 200]

    async def poll() -> str:
        async with AsyncClient(url) as ps:
            return (await ps.job("j1")).state

    assert asyncio.run(poll()) == "running" and len(script.seen) == 2


def test_retry_after_is_read_and_capped() -> None:
    def resp(value: str | None) -> httpx.Response:
        return httpx.Response(503, headers={} if value is None else {"Retry-After": value})

    assert retry_after_s(resp("7"), 1.0, 30.0) == 7.0
    assert retry_after_s(resp("120"), 1.0, 30.0) == 30.0
    assert retry_after_s(resp("Wed, 21 Oct 2015 07:28:00 GMT"), 1.0, 30.0) == 1.0
    assert retry_after_s(resp(None), 2.0, 30.0) == 2.0
