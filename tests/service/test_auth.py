"""API keys and tenancy on SQLite and PostgreSQL: 401s, cross-tenant 404s, dedup per tenant."""

from __future__ import annotations

import hashlib
import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from poisonscan.cli import main as cli_main
from service import repository as repo
from service.config import Settings, get_settings
from service.db import get_sessionmaker, session_scope
from service.main import create_app
from service.models import ApiKey, Dataset, Job
from tests.service.support import (
    bearer,
    data_bytes,
    make_key,
    post_dataset,
    post_job,
    stored_files,
)

PROBLEM = "application/problem+json"


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"auth_enabled": True})


@pytest.fixture
def api(auth_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(auth_settings), raise_server_exceptions=False) as c:
        yield c


def succeed(settings: Settings, job_id: str, n: int = 30) -> None:
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        repo.replace_scores(session, job_id, np.linspace(0, 1, n), np.zeros(n, dtype=bool))
        assert repo.mark_job_running(session, job_id, "test")
        assert repo.mark_job_succeeded(session, job_id, {}, None)


def assert_401(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["content-type"] == PROBLEM
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.json()["status"] == 401


def rows(settings: Settings, model: type[Dataset] | type[Job]) -> list[str]:
    with get_sessionmaker(settings.database_url)() as session:
        return list(session.scalars(select(model.id)))


# --------------------------------------------------------------------------- keys


def test_cli_creates_lists_and_revokes_keys(
    auth_settings: Settings,
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("POISONSCAN_DATABASE_URL", auth_settings.database_url)
    monkeypatch.setenv("POISONSCAN_DATA_DIR", str(auth_settings.data_dir))
    get_settings.cache_clear()
    try:
        assert cli_main(["keys", "create", "--tenant", "acme", "--name", "ci"]) == 0
        token = capsys.readouterr().out.strip()
        assert re.fullmatch(r"psk_[a-z0-9]{16}_[A-Za-z0-9_-]{43}", token)
        key_id = token.split("_")[1]
        assert api.get("/datasets", headers=bearer(token)).status_code == 200

        assert cli_main(["keys", "list"]) == 0
        listed = capsys.readouterr().out
        assert key_id in listed and "acme" in listed and token not in listed

        assert cli_main(["keys", "revoke", key_id]) == 0
        assert_401(api.get("/datasets", headers=bearer(token)))
        assert cli_main(["keys", "revoke", "nosuchkey"]) == 1
        assert cli_main(["keys", "create", "--tenant", "bad tenant!"]) == 2
    finally:
        get_settings.cache_clear()
    with get_sessionmaker(auth_settings.database_url)() as session:
        key = session.get(ApiKey, key_id)
        assert key is not None and key.revoked_at is not None and key.name == "ci"
        # Only the hash is stored; nothing in the row holds the secret.
        assert key.secret_hash == hashlib.sha256(token.encode()).hexdigest()
        secret = token.rsplit("_", 1)[1]
        assert all(secret not in str(v) for v in vars(key).values())


def test_missing_invalid_or_revoked_key_is_401(auth_settings: Settings, api: TestClient) -> None:
    token = make_key(auth_settings, "acme")
    for headers in (
        {},
        bearer("nonsense"),
        bearer(token[:-1] + ("A" if token[-1] != "A" else "B")),  # right id, wrong secret
        {"Authorization": f"Basic {token}"},
    ):
        assert_401(api.get("/datasets", headers=headers))
    assert_401(api.post("/jobs", json={"dataset_id": "x", "method": "ss"}))
    assert_401(api.get("/methods"))
    assert api.get("/datasets", headers=bearer(token)).status_code == 200
    assert api.get("/datasets", headers={"X-API-Key": token}).status_code == 200

    with session_scope(get_sessionmaker(auth_settings.database_url)) as session:
        session.get_one(ApiKey, token.split("_")[1]).revoked_at = repo.utcnow()
    assert_401(api.get("/datasets", headers=bearer(token)))


def test_probes_and_docs_need_no_key(api: TestClient) -> None:
    for path in ("/healthz", "/metrics", "/docs", "/redoc", "/openapi.json"):
        assert api.get(path).status_code == 200, path
    assert api.get("/readyz").status_code in (200, 503)  # no worker: degraded, never 401
    schemes = api.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"
    op = api.get("/openapi.json").json()["paths"]["/jobs"]["post"]
    assert {"bearer": []} in op["security"] and "401" in op["responses"]
    assert "429" in op["responses"]


# --------------------------------------------------------------------------- tenancy


def test_another_tenants_ids_are_404_like_missing_ones(
    auth_settings: Settings, api: TestClient, tmp_path: Path
) -> None:
    alice, bob = make_key(auth_settings, "alice"), make_key(auth_settings, "bob")
    dataset_id = post_dataset(api, alice, data_bytes(tmp_path)).json()["id"]
    done_id = post_job(api, alice, dataset_id).json()["id"]
    succeed(auth_settings, done_id)
    queued_id = post_job(api, alice, dataset_id).json()["id"]
    missing = str(uuid.uuid4())

    probes = [
        ("GET", "/datasets/{d}"),
        ("DELETE", "/datasets/{d}"),
        ("GET", "/datasets/{d}/samples/0.png"),
        ("GET", "/jobs/{j}"),
        ("POST", "/jobs/{q}/cancel"),
        ("DELETE", "/jobs/{j}"),
        ("GET", "/jobs/{j}/scores"),
        ("GET", "/jobs/{j}/scores.csv"),
        ("GET", "/jobs/{j}/scores.parquet"),
    ]
    for method, path in probes:
        theirs = api.request(
            method, path.format(d=dataset_id, j=done_id, q=queued_id), headers=bearer(bob)
        )
        nothing = api.request(
            method, path.format(d=missing, j=missing, q=missing), headers=bearer(bob)
        )
        assert theirs.status_code == nothing.status_code == 404, (method, path, theirs.text)
        assert theirs.headers["content-type"] == PROBLEM
        theirs_body = theirs.text
        for real in (dataset_id, done_id, queued_id):
            theirs_body = theirs_body.replace(real, missing)
        assert theirs_body == nothing.text, (method, path)
    # A job on another tenant's dataset: the dataset does not exist for bob.
    resp = post_job(api, bob, dataset_id)
    assert resp.status_code == 404 and resp.json()["detail"] == f"dataset {dataset_id} not found"
    # Nothing changed for alice.
    assert api.get(f"/jobs/{queued_id}", headers=bearer(alice)).json()["state"] == "queued"
    assert api.get(f"/jobs/{done_id}/scores", headers=bearer(alice)).status_code == 200
    assert len(rows(auth_settings, Job)) == 2


def test_lists_show_the_tenants_rows_and_admin_sees_all(
    auth_settings: Settings, api: TestClient, tmp_path: Path
) -> None:
    alice, bob = make_key(auth_settings, "alice"), make_key(auth_settings, "bob")
    admin = make_key(auth_settings, "ops", admin=True)
    a = post_dataset(api, alice, data_bytes(tmp_path, seed=1)).json()["id"]
    b = post_dataset(api, bob, data_bytes(tmp_path, seed=2)).json()["id"]
    ja, jb = post_job(api, alice, a).json()["id"], post_job(api, bob, b).json()["id"]

    def ids(token: str, path: str) -> set[str]:
        page = api.get(path, headers=bearer(token)).json()
        assert page["total"] == len(page["items"])
        return {item["id"] for item in page["items"]}

    assert ids(alice, "/datasets") == {a} and ids(bob, "/datasets") == {b}
    assert ids(alice, "/jobs") == {ja} and ids(bob, "/jobs") == {jb}
    assert ids(bob, f"/jobs?dataset_id={a}") == set()
    assert ids(admin, "/datasets") == {a, b} and ids(admin, "/jobs") == {ja, jb}
    owners = {j["id"]: j["tenant"] for j in api.get("/jobs", headers=bearer(admin)).json()["items"]}
    assert owners == {ja: "alice", jb: "bob"}
    # The admin acts on any tenant's rows; a job it makes belongs to the dataset's tenant.
    assert api.get(f"/datasets/{b}", headers=bearer(admin)).status_code == 200
    jc = post_job(api, admin, a).json()["id"]
    assert ids(alice, "/jobs") == {ja, jc}
    assert api.post(f"/jobs/{jb}/cancel", headers=bearer(admin)).json()["state"] == "cancelled"
    # A clean reserve must be of the dataset's tenant, even for the admin.
    body = {"dataset_id": a, "method": "ss", "clean_dataset_id": b}
    assert api.post("/jobs", json=body, headers=bearer(admin)).status_code == 404


def test_dedup_stays_within_a_tenant(
    auth_settings: Settings, api: TestClient, tmp_path: Path
) -> None:
    alice, bob = make_key(auth_settings, "alice"), make_key(auth_settings, "bob")
    data = data_bytes(tmp_path)
    first = post_dataset(api, alice, data)
    again = post_dataset(api, alice, data)
    theirs = post_dataset(api, bob, data)

    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert theirs.status_code == 201, theirs.text  # bob learns nothing of alice's upload
    assert theirs.json()["id"] != first.json()["id"]
    assert len(rows(auth_settings, Dataset)) == 2
    # One content-addressed file serves both; deleting bob's row keeps alice's file.
    assert len(stored_files(auth_settings)) == 1
    assert api.delete(f"/datasets/{theirs.json()['id']}", headers=bearer(bob)).status_code == 204
    assert len(stored_files(auth_settings)) == 1
    png = api.get(f"/datasets/{first.json()['id']}/samples/0.png", headers=bearer(alice))
    assert png.status_code == 200 and png.headers["cache-control"].startswith("private")
    assert api.delete(f"/datasets/{first.json()['id']}", headers=bearer(alice)).status_code == 204
    assert stored_files(auth_settings) == []


def test_idempotency_keys_are_per_tenant(
    auth_settings: Settings, api: TestClient, tmp_path: Path
) -> None:
    alice, bob = make_key(auth_settings, "alice"), make_key(auth_settings, "bob")
    files = {"file": ("set.npz", io.BytesIO(data_bytes(tmp_path)), "application/octet-stream")}
    headers = {"Idempotency-Key": "k1"}
    first = api.post("/datasets", files=files, headers=headers | bearer(alice))
    files["file"][1].seek(0)
    other = api.post("/datasets", files=files, headers=headers | bearer(bob))
    assert first.status_code == other.status_code == 201
    assert first.json()["id"] != other.json()["id"]
