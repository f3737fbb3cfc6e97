"""Faults against a real API process (``poisonscan serve``): a SIGKILL mid-upload leaves
nothing once the sweeper ran; slow bodies and slow headers are cut off."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from service import sweeper
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from service.models import Dataset
from tests.e2e.test_embedded import _free_port
from tests.service.support import image_zip, npz_bytes, tiny_images
from tests.worker import support as worker_support
from tests.worker.support import background, settings_env

BOUNDARY = "poisonscan-test-boundary"


@pytest.fixture(autouse=True)
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded machine (2 shared cores) can take minutes to import torch and start."""
    monkeypatch.setattr(worker_support, "READY_TIMEOUT_S", 400.0)


@contextmanager
def api_process(
    settings: Settings, tmp_path: Path, extra: Mapping[str, str] | None = None, log: str = "api"
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``poisonscan serve`` on a free port with the test's settings; yields (process, URL)."""
    port = _free_port()
    env = settings_env(settings) | dict(extra or {})
    cmd = [sys.executable, "-m", "poisonscan", "serve", "--port", str(port)]
    ready = lambda text: "Uvicorn running on" in text  # noqa: E731  (bound, not only started)
    with background(cmd, env, tmp_path / f"{log}.log", ready) as proc:
        yield proc, f"http://127.0.0.1:{port}"


def _dataset_rows(settings: Settings) -> int:
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        return int(session.scalar(select(func.count()).select_from(Dataset)) or 0)


def _staged(settings: Settings) -> list[Path]:
    tmp = settings.storage_root / "tmp"
    return sorted(p for p in tmp.glob("*") if p.is_file()) if tmp.is_dir() else []


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _multipart_head(filename: str) -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _send_half_a_chunked_upload(url: str, data: bytes) -> socket.socket:
    sock = _connect(url)
    sock.sendall(
        b"POST /datasets HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
    )
    sock.sendall(_chunk(_multipart_head("set.npz")))
    half = data[: len(data) // 2]
    for i in range(0, len(half), 64 * 1024):
        sock.sendall(_chunk(half[i : i + 64 * 1024]))
    return sock


def _kill_while_staged(
    proc: subprocess.Popen[bytes], settings: Settings, url: str, data: bytes
) -> bool:
    """Upload ``data`` whole and SIGKILL the API while its staged file exists."""
    errors: list[BaseException] = []

    def send() -> None:
        try:
            files = {"file": ("imgs.zip", data, "application/zip")}
            httpx.post(f"{url}/datasets", files=files, timeout=60)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        if _staged(settings):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            thread.join(timeout=10)
            return True
        time.sleep(0.0005)
    return False


@pytest.mark.slow
def test_a_killed_upload_leaves_nothing_after_the_sweeper(
    settings: Settings, tmp_path: Path
) -> None:
    x, labels = tiny_images(n=3000, seed=3)
    data = npz_bytes(x, labels, tmp_path)

    # 1. Half a chunked upload, then SIGKILL: the sweeper finds nothing to keep.
    with api_process(settings, tmp_path, log="api1") as (proc, url):
        sock = _send_half_a_chunked_upload(url, data)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        sock.close()
    now = settings.model_copy(update={"staged_max_age_s": 0.0})
    sweeper.sweep(get_sessionmaker(settings.database_url), now)
    assert _staged(settings) == []
    assert _dataset_rows(settings) == 0

    # 2. SIGKILL while the upload is staged (checked, not yet stored): a file is left ...
    archive = image_zip(n_per_class=600, classes=("a", "b", "c"))
    for attempt in range(3):
        with api_process(settings, tmp_path, log=f"api2-{attempt}") as (proc, url):
            caught = _kill_while_staged(proc, settings, url, archive)
        if caught:
            break
    assert caught, "the staged file was never seen before the upload finished"
    assert _dataset_rows(settings) == 0
    assert _staged(settings), "SIGKILL left no staged file (nothing to sweep)"

    # ... and the next API process sweeps it at startup (older than staged_max_age_s).
    time.sleep(1.0)
    with api_process(settings, tmp_path, {"POISONSCAN_STAGED_MAX_AGE_S": "0.5"}, "api3") as (
        _,
        url,
    ):
        deadline = time.monotonic() + 20
        while _staged(settings) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(f"{url}/datasets", timeout=10).json()["total"] == 0
    assert _staged(settings) == []
    assert _dataset_rows(settings) == 0


def _read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    out = b""
    try:
        while chunk := sock.recv(4096):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_slow_bodies_and_slow_headers_are_cut_off(settings: Settings, tmp_path: Path) -> None:
    timeouts = {"POISONSCAN_BODY_TIMEOUT_S": "2", "POISONSCAN_HEADER_TIMEOUT_S": "2"}
    with api_process(settings, tmp_path, timeouts) as (_, url):
        # A body at one byte a second: 408 once the body timeout passed.
        sock = _connect(url)
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        start = time.monotonic()
        sock.settimeout(0.05)
        reply = b""
        while not reply and time.monotonic() - start < 15:
            try:
                sock.sendall(b" ")
                reply = sock.recv(4096)
                if not reply:
                    break
            except TimeoutError:
                time.sleep(0.95)
            except (BrokenPipeError, ConnectionResetError):
                break
        body_cut_after = time.monotonic() - start
        reply += _read_until_closed(sock, 5)
        sock.close()

        # Headers at one byte a second: the connection is closed.
        sock = _connect(url)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 15 and not closed:
            try:
                sock.sendall(b"a")
                sock.settimeout(1.0)
                closed = sock.recv(4096) == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        header_cut_after = time.monotonic() - start
        sock.close()

        # The server still answers everyone else.
        healthy = httpx.get(f"{url}/healthz", timeout=10).status_code

    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"application/problem+json" in reply
    assert b"connection: close" in reply.lower()
    assert 1.5 <= body_cut_after < 6.0
    assert closed
    assert 1.5 <= header_cut_after < 6.0
    assert healthy == 200
