"""Database, broker and app fixtures shared by the service, worker and e2e tests.

Every test runs against a database migrated with ``alembic upgrade head``:
a fresh SQLite file, or one PostgreSQL database created for the session
(tables truncated before each test). Brokers are real: Redis for the
PostgreSQL runs, Celery's SQLite (SQLAlchemy) transport for the SQLite runs.
"""

from __future__ import annotations

import io
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
import redis
from alembic import command
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from sqlalchemy.engine import make_url

from detection.readers import write_npz
from service.config import Settings
from service.db import get_engine, normalise_url
from service.main import create_app
from service.migrate import alembic_config

PG_ADMIN_URL = os.environ.get(
    "POISONSCAN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("POISONSCAN_TEST_REDIS_URL", "redis://127.0.0.1:6379")
BACKENDS = ["sqlite", "postgres"]
QueueSize = Callable[[str], int]


def alembic_upgrade(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head."""
    admin = _libpq(PG_ADMIN_URL)
    name = f"poisonscan_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unavailable at {PG_ADMIN_URL}: {exc}")
    url = normalise_url(make_url(PG_ADMIN_URL).set(database=name).render_as_string(False))
    try:
        alembic_upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate(url: str) -> None:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute(
            "TRUNCATE sample_score, job, dataset, worker_heartbeat, api_key, "
            "idempotency_record CASCADE"
        )


def _redis_url(db: int) -> str:
    client = redis.Redis.from_url(f"{REDIS_URL}/{db}", socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis unavailable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return f"{REDIS_URL}/{db}"


def make_settings(backend: str, tmp_path: Path, redis_db: int, pg_url: str | None) -> Settings:
    """Settings for one test: a migrated database, an empty broker, storage under tmp_path."""
    if backend == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'poisonscan.sqlite3'}"
        alembic_upgrade(database_url)
        broker_url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"
    else:
        assert pg_url is not None
        _truncate(pg_url)
        database_url, broker_url = pg_url, _redis_url(redis_db)
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        broker_url=broker_url,
        storage_dir=tmp_path / "storage",
        max_upload_bytes=4 * 1024 * 1024,
        progress_interval_s=0.2,
        cancel_poll_interval_s=0.2,
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
def redis_db() -> int:
    """Redis database of the test broker (flushed per test); suites override it."""
    return 11


@pytest.fixture
def settings(
    backend: str, tmp_path: Path, redis_db: int, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    pg_url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    s = make_settings(backend, tmp_path, redis_db=redis_db, pg_url=pg_url)
    yield s
    if backend == "sqlite":
        get_engine(s.database_url).dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def broker_queue_size(settings: Settings, queue: str) -> int:
    """Messages waiting in ``queue``, read from the broker itself."""
    if settings.broker_url.startswith("redis"):
        client = redis.Redis.from_url(settings.broker_url)
        try:
            return int(client.llen(queue))
        finally:
            client.close()
    path = make_url(settings.broker_url.removeprefix("sqla+")).database
    assert path is not None
    if not Path(path).exists():
        return 0
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
            "WHERE q.name = ? AND m.visible = 1",
            (queue,),
        ).fetchone()
    return int(row[0])


@pytest.fixture
def queue_size(settings: Settings) -> QueueSize:
    return lambda queue: broker_queue_size(settings, queue)


def npz_bytes(x: NDArray[np.generic], labels: NDArray[np.generic], tmp_path: Path) -> bytes:
    path = tmp_path / f"{uuid.uuid4().hex}.npz"
    write_npz(path, x, labels)
    data = path.read_bytes()
    path.unlink()
    return data


def tiny_images(
    n: int = 60, seed: int = 0, n_classes: int = 3
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % n_classes
    return x, labels


def upload(
    client: TestClient, data: bytes, filename: str = "set.npz", name: str | None = None
) -> httpx.Response:
    files = {"file": (filename, io.BytesIO(data), "application/octet-stream")}
    resp: httpx.Response = client.post(
        "/datasets", files=files, data={"name": name} if name else None
    )
    return resp


def stored_files(settings: Settings) -> list[Path]:
    """Every regular file under the storage root (temp files included)."""
    return sorted(p for p in settings.storage_root.rglob("*") if p.is_file())


def image_zip(n_per_class: int = 4, classes: tuple[str, ...] = ("cat", "dog")) -> bytes:
    """An ImageFolder zip ``imgs/<class>/<i>.png`` of 8x8 grey PNGs, classes in archive order."""
    import zipfile

    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in classes:
            for i in range(n_per_class):
                png = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(png, "PNG")
                zf.writestr(f"imgs/{name}/{i:03d}.png", png.getvalue())
    return buf.getvalue()


def zip_members(data: bytes) -> list[str]:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [n for n in zf.namelist() if not n.endswith("/")]


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on a free port; yields its URL."""
    import socket

    from moto.server import ThreadedMotoServer

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_put(endpoint: str, path: str, data: bytes) -> None:
    """Write ``data`` at ``bucket/key`` (the bucket is made when missing)."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    bucket = path.split("/", 1)[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    fs.pipe(path, data)


def make_key(settings: Settings, tenant: str, admin: bool = False, **quotas: int) -> str:
    """A new API key of ``tenant`` (quota overrides by column name); returns its token."""
    from service import auth
    from service.db import get_sessionmaker, session_scope

    with session_scope(get_sessionmaker(settings.database_url)) as session:
        return auth.create(session, tenant, admin=admin, quotas=dict(quotas)).token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def data_bytes(tmp_path: Path, seed: int = 0) -> bytes:
    return npz_bytes(*tiny_images(n=30, seed=seed), tmp_path)


def post_dataset(api: TestClient, token: str, data: bytes) -> httpx.Response:
    files = {"file": ("set.npz", io.BytesIO(data), "application/octet-stream")}
    resp: httpx.Response = api.post("/datasets", files=files, headers=bearer(token))
    return resp


def post_job(api: TestClient, token: str, dataset_id: str) -> httpx.Response:
    body = {"dataset_id": dataset_id, "method": "ss"}
    resp: httpx.Response = api.post("/jobs", json=body, headers=bearer(token))
    return resp
