"""POST /datasets/import: s3:// (a real S3-compatible server), file:// under allowed roots."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.config import Settings
from service.db import get_sessionmaker
from service.main import create_app
from service.models import Dataset
from tests.service.support import npz_bytes, s3_put, stored_files, tiny_images

PROBLEM = "application/problem+json"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "shared"
    path.mkdir()
    return path


@pytest.fixture
def api(settings: Settings, moto_s3: str, root: Path) -> Iterator[TestClient]:
    configured = settings.model_copy(update={"s3_endpoint_url": moto_s3, "reference_roots": [root]})
    with TestClient(create_app(configured), raise_server_exceptions=False) as c:
        yield c


def rows(settings: Settings) -> int:
    with get_sessionmaker(settings.database_url)() as session:
        return session.scalar(select(func.count()).select_from(Dataset)) or 0


def pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.array([object()] * 4, dtype=object), y=np.arange(4))
    return buf.getvalue()


def test_s3_reference_is_copied_and_checked_like_an_upload(
    api: TestClient, settings: Settings, moto_s3: str, tmp_path: Path
) -> None:
    data = npz_bytes(*tiny_images(n=60), tmp_path)
    s3_put(moto_s3, "training/sets/tiny.npz", data)
    s3_put(moto_s3, "training/sets/pickled.npz", pickled_npz())
    s3_put(moto_s3, "training/sets/huge.npz", b"\0" * (settings.max_upload_bytes + 1))

    first = api.post("/datasets/import", json={"uri": "s3://training/sets/tiny.npz"})
    again = api.post("/datasets/import", json={"uri": "s3://training/sets/tiny.npz", "name": "x"})
    missing = api.post("/datasets/import", json={"uri": "s3://training/sets/nope.npz"})
    pickled = api.post("/datasets/import", json={"uri": "s3://training/sets/pickled.npz"})
    huge = api.post("/datasets/import", json={"uri": "s3://training/sets/huge.npz"})

    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["name"], body["format"], body["n_samples"]) == ("tiny.npz", "npz", 60)
    assert body["source_uri"] == "s3://training/sets/tiny.npz"
    assert (again.status_code, again.json()["id"]) == (200, body["id"])
    sha = body["sha256"]
    assert (settings.storage_root / sha[:2] / f"{sha}.npz").read_bytes() == data
    assert (missing.status_code, pickled.status_code, huge.status_code) == (422, 422, 413)
    for resp in (missing, pickled, huge):
        assert resp.headers["content-type"] == PROBLEM
    assert missing.json()["errors"][0]["loc"] == ["body", "uri"]
    assert rows(settings) == 1
    assert len(stored_files(settings)) == 1  # nothing left behind by the refused ones


def test_file_references_must_stay_under_an_allowed_root(
    api: TestClient, settings: Settings, root: Path, tmp_path: Path
) -> None:
    data = npz_bytes(*tiny_images(n=30, seed=3), tmp_path)
    (root / "ok.npz").write_bytes(data)
    outside = tmp_path / "secret.npz"
    outside.write_bytes(npz_bytes(*tiny_images(n=30, seed=4), tmp_path))
    (root / "link.npz").symlink_to(outside)

    ok = api.post("/datasets/import", json={"uri": f"file://{root}/ok.npz"})
    escape = api.post("/datasets/import", json={"uri": f"file://{root}/../secret.npz"})
    direct = api.post("/datasets/import", json={"uri": f"file://{outside}"})
    link = api.post("/datasets/import", json={"uri": f"file://{root}/link.npz"})
    remote_host = api.post("/datasets/import", json={"uri": "file://evil.example/x.npz"})

    assert ok.status_code == 201, ok.text
    assert ok.json()["source_uri"] == f"file://{root}/ok.npz"
    for resp in (escape, direct, link, remote_host):
        assert resp.status_code == 422, resp.text
        assert resp.headers["content-type"] == PROBLEM
    assert "allowed root" in escape.json()["detail"]
    assert rows(settings) == 1


@pytest.mark.parametrize(
    "uri", ["http://example.com/x.npz", "ftp://example.com/x.npz", "s3://bucket-only", "x.npz"]
)
def test_other_schemes_and_malformed_references_are_refused(api: TestClient, uri: str) -> None:
    resp = api.post("/datasets/import", json={"uri": uri})

    assert resp.status_code == 422
    assert resp.json()["errors"][0]["loc"] == ["body", "uri"]


@pytest.fixture
def https_root(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A TLS file server on 127.0.0.1 (a test CA); yields its URL, its root and the CA file."""
    import functools
    import http.server
    import ssl
    import threading

    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    served = tmp_path / "www"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", served, ca_file
    finally:
        server.shutdown()
        server.server_close()


def test_https_reference_is_verified_and_copied(
    settings: Settings, https_root: tuple[str, Path, Path], tmp_path: Path
) -> None:
    url, served, ca_file = https_root
    data = npz_bytes(*tiny_images(n=45, seed=7), tmp_path)
    (served / "set.npz").write_bytes(data)
    trusted = settings.model_copy(update={"reference_ca_bundle": ca_file})

    with TestClient(create_app(settings), raise_server_exceptions=False) as untrusting:
        refused = untrusting.post("/datasets/import", json={"uri": f"{url}/set.npz"})
    with TestClient(create_app(trusted), raise_server_exceptions=False) as api:
        ok = api.post("/datasets/import", json={"uri": f"{url}/set.npz"})
        missing = api.post("/datasets/import", json={"uri": f"{url}/nope.npz"})

    assert refused.status_code == 422  # the test CA is not trusted by default
    assert ok.status_code == 201, ok.text
    assert (ok.json()["n_samples"], ok.json()["source_uri"]) == (45, f"{url}/set.npz")
    assert missing.status_code == 422
    assert rows(settings) == 1
