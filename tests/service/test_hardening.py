"""No 500 from bad input; infrastructure faults as 503/507 with Retry-After (SQLite and PostgreSQL).

Each case here was a 500 in the production probe of issue 12.
"""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from service.main import create_app
from service.models import Dataset
from tests.service.support import npz_bytes, stored_files, tiny_images, upload

PROBLEM = "application/problem+json"
HUGE = 10**20


def assert_problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    return body


def dataset_rows(settings: Settings) -> int:
    with get_sessionmaker(settings.database_url)() as session:
        return session.scalar(select(func.count()).select_from(Dataset)) or 0


@pytest.fixture
def dataset_id(client: TestClient, tmp_path: Path) -> str:
    resp = upload(client, npz_bytes(*tiny_images(), tmp_path))
    assert resp.status_code == 201, resp.text
    ds: str = resp.json()["id"]
    return ds


@pytest.mark.parametrize(
    "url",
    [
        f"/datasets?offset={HUGE}",
        f"/jobs?offset={HUGE}",
        f"/jobs?limit={HUGE}",
        "/jobs/ab%00cd",
        "/datasets/ab%00cd",
        "/jobs?method=a%00b",
        "/jobs/ab%00cd/scores",
    ],
)
def test_bad_query_or_path_is_4xx(client: TestClient, url: str) -> None:
    assert_problem(client.get(url), 422)


def csv_duplicate_columns() -> bytes:
    return b"a,a,label\n1,2,0\n3,4,1\n"


def npz_malformed_header() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<u1',}\n")
        zf.writestr("y.npy", b"\x93NUMPY\x01\x00\x20\x00garbage garbage garbage garbag\n")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (csv_duplicate_columns(), "t.csv"),
        (npz_malformed_header(), "b.npz"),
        (b"not a dataset", "a." + "x" * 300),
        (b"not a dataset", "a.tar." + "x" * 300),
    ],
    ids=["duplicate-csv-columns", "malformed-npy-header", "long-suffix", "long-tar-suffix"],
)
def test_bad_upload_is_422_and_leaves_nothing(
    client: TestClient, settings: Settings, data: bytes, filename: str
) -> None:
    body = assert_problem(upload(client, data, filename), 422)
    assert body["detail"].startswith("invalid dataset")
    assert stored_files(settings) == []
    assert dataset_rows(settings) == 0


def test_nul_in_name_is_422_and_leaves_no_file(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    resp = upload(client, npz_bytes(*tiny_images(), tmp_path), name="a\x00b")
    if settings.is_sqlite:  # SQLite stores NUL; only PostgreSQL refuses it
        assert resp.status_code == 201, resp.text
        return
    assert_problem(resp, 422)
    assert stored_files(settings) == []
    assert dataset_rows(settings) == 0


@pytest.mark.parametrize(
    "raw_params",
    ['{"budget": NaN}', '{"budget": 1e999}', '{"budget": -Infinity}', '{"zzz": [1, NaN]}'],
)
def test_non_finite_params_are_422(client: TestClient, dataset_id: str, raw_params: str) -> None:
    raw = f'{{"dataset_id": "{dataset_id}", "method": "ss", "params": {raw_params}}}'
    resp = client.post("/jobs", content=raw, headers={"content-type": "application/json"})
    body = assert_problem(resp, 422)
    assert body["errors"][0]["loc"][:2] == ["body", "params"]


@pytest.mark.parametrize("index", [2**70, -(2**70), 2**63])
def test_ground_truth_beyond_64_bits_is_422(
    client: TestClient, dataset_id: str, index: int
) -> None:
    body = {"dataset_id": dataset_id, "method": "ss", "ground_truth_poison_indices": [index]}
    assert_problem(client.post("/jobs", json=body), 422)


def test_nul_in_json_id_is_4xx(client: TestClient) -> None:
    resp = client.post("/jobs", json={"dataset_id": "a\x00b", "method": "ss"})
    assert resp.status_code in (404, 422), resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)


def succeeded_job(settings: Settings, client: TestClient, dataset_id: str) -> str:
    job_id: str = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"}).json()["id"]
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        repo.mark_job_running(session, job_id, "test")
        repo.replace_scores(session, job_id, np.linspace(0, 1, 60), np.zeros(60, dtype=bool))
        repo.mark_job_succeeded(session, job_id, {}, None)
    return job_id


def cursor(key: Any) -> str:
    raw = json.dumps({"o": "score_desc", "f": None, "k": key}).encode()
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize("key", [True, 2**70, -(2**70), 1.5, "7"])
def test_bad_cursor_key_is_422(
    client: TestClient, settings: Settings, dataset_id: str, key: Any
) -> None:
    job_id = succeeded_job(settings, client, dataset_id)
    resp = client.get(f"/jobs/{job_id}/scores", params={"cursor": cursor(key)})
    assert_problem(resp, 422)
    assert client.get(f"/jobs/{job_id}/scores", params={"cursor": cursor(3)}).status_code == 200


def blank_png_zip(side: int) -> bytes:
    png = io.BytesIO()
    Image.new("L", (side, side)).save(png, format="PNG")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for cls in ("a", "b"):
            zf.writestr(f"set/{cls}/0.png", png.getvalue())
    return buf.getvalue()


def test_image_above_pixel_budget_is_refused_from_its_header(
    client: TestClient, settings: Settings
) -> None:
    data = blank_png_zip(5000)  # 25 M pixels > the default 4096 x 4096
    assert len(data) < 200_000
    body = assert_problem(upload(client, data, "big.zip"), 422)
    assert "too large" in body["detail"]
    assert stored_files(settings) == []


def test_chunked_body_above_limit_is_413_before_it_is_stored(
    client: TestClient, settings: Settings
) -> None:
    limit = settings.max_upload_bytes

    def chunks() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=file; filename=a.npz\r\n\r\n"
        for _ in range(limit // 65536 + 8):
            yield b"\0" * 65536

    resp = client.post(
        "/datasets", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert_problem(resp, 413)
    assert stored_files(settings) == []


def test_declared_body_above_limit_is_413(client: TestClient, settings: Settings) -> None:
    resp = client.post(
        "/datasets",
        content=b"x",
        headers={"content-length": str(settings.max_upload_bytes * 2), "content-type": "a/b"},
    )
    assert_problem(resp, 413)


# --- infrastructure faults -------------------------------------------------------


def test_database_down_is_503_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    down = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    if settings.is_sqlite:  # a directory where the database file should be cannot open
        (tmp_path / "db-dir").mkdir()
        down = f"sqlite:///{tmp_path / 'db-dir'}"
    broken = settings.model_copy(update={"database_url": down})
    with TestClient(create_app(broken), raise_server_exceptions=False) as client:
        for resp in (client.get("/jobs"), upload(client, b"abc", "a.npz")):
            body = assert_problem(resp, 503)
            assert int(resp.headers["retry-after"]) > 0
            assert "database" in body["detail"]
    assert stored_files(settings) == []


def test_sqlite_locked_is_503_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    if not settings.is_sqlite:
        pytest.skip("SQLite only")
    fast = settings.model_copy(update={"db_timeout_s": 0.2})
    path = fast.database_url.removeprefix("sqlite:///")
    data = npz_bytes(*tiny_images(), tmp_path)
    with TestClient(create_app(fast), raise_server_exceptions=False) as client:
        lock = sqlite3.connect(path, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # WAL readers go on; a writer waits, then gives up
            resp = upload(client, data)
        finally:
            lock.close()
        assert_problem(resp, 503)
        assert resp.headers["retry-after"]
        assert stored_files(settings) == []
        assert upload(client, data).status_code == 201


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: writing more fails with ENOSPC for real (needs root, as in CI)."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_507_and_leaves_no_partial_file(
    settings: Settings, full_disk: Path, tmp_path: Path
) -> None:
    on_full = settings.model_copy(update={"storage_dir": full_disk})
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(600, 32, 32, 1), dtype=np.uint8)  # ~600 KB, incompressible
    data = npz_bytes(x, np.arange(600) % 3, tmp_path)
    with TestClient(create_app(on_full), raise_server_exceptions=False) as client:
        resp = upload(client, data, "big.npz")
    assert_problem(resp, 507)
    assert int(resp.headers["retry-after"]) > 0
    assert [p for p in full_disk.rglob("*") if p.is_file()] == []
