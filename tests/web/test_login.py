"""The dashboard with auth on: a login form sets an HttpOnly cookie; pages show a tenant's rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.service.support import data_bytes, make_key, post_dataset, post_job


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"auth_enabled": True})


def browser(settings: Settings) -> TestClient:
    """A client that keeps cookies and does not follow redirects (we check them)."""
    return TestClient(create_app(settings), raise_server_exceptions=False, follow_redirects=False)


@pytest.fixture
def api(auth_settings: Settings) -> Iterator[TestClient]:
    with browser(auth_settings) as c:
        yield c


def login(client: TestClient, token: str, next_url: str = "/ui/jobs") -> None:
    resp = client.post("/ui/login", data={"key": token, "next": next_url})
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == next_url
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie


def test_pages_redirect_to_the_login_form_without_a_key(api: TestClient) -> None:
    resp = api.get("/ui/jobs?state=queued")
    assert resp.status_code == 303
    assert resp.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%3Fstate%3Dqueued"
    form = api.get(resp.headers["location"])
    assert form.status_code == 200 and 'name="key"' in form.text and 'type="password"' in form.text
    assert 'value="/ui/jobs?state=queued"' in form.text
    # Only dashboard paths are followed after a login.
    assert 'value="/ui/jobs"' in api.get("/ui/login?next=https://evil.example/").text


def test_a_wrong_key_shows_the_form_again(auth_settings: Settings, api: TestClient) -> None:
    resp = api.post("/ui/login", data={"key": "psk_nope", "next": "/ui/jobs"})
    assert resp.status_code == 401
    assert "invalid or revoked API key" in resp.text and "set-cookie" not in resp.headers


def test_the_dashboard_shows_only_the_tenants_jobs(
    auth_settings: Settings, api: TestClient, tmp_path: Path
) -> None:
    alice, bob = make_key(auth_settings, "alice"), make_key(auth_settings, "bob")
    admin = make_key(auth_settings, "ops", admin=True)
    a_job = post_job(api, alice, post_dataset(api, alice, data_bytes(tmp_path, 1)).json()["id"])
    b_job = post_job(api, bob, post_dataset(api, bob, data_bytes(tmp_path, 2)).json()["id"])
    a_id, b_id = a_job.json()["id"], b_job.json()["id"]

    login(api, alice)
    page = api.get("/ui/jobs")
    assert page.status_code == 200
    assert a_id[:8] in page.text and b_id[:8] not in page.text
    assert "tenant <strong>alice</strong>" in page.text
    assert b_id[:8] not in api.get("/ui/jobs/rows").text
    assert api.get(f"/ui/jobs/{a_id}").status_code == 200
    theirs = api.get(f"/ui/jobs/{b_id}")
    assert theirs.status_code == 404 and "text/html" in theirs.headers["content-type"]
    assert api.get(f"/ui/jobs/{b_id}/status").status_code == 404
    assert api.get(f"/jobs/{b_id}/report.html").status_code == 404
    # The cookie counts for reads only: a cross-site form cannot act with it.
    assert api.get(f"/jobs/{a_id}").status_code == 200
    assert api.post(f"/jobs/{a_id}/cancel").status_code == 401

    assert api.post("/ui/logout").status_code == 303
    assert api.get("/ui/jobs").status_code == 303

    login(api, admin)
    page = api.get("/ui/jobs")
    assert a_id[:8] in page.text and b_id[:8] in page.text and "admin" in page.text


def test_a_revoked_key_logs_the_browser_out(auth_settings: Settings, api: TestClient) -> None:
    from service import auth
    from service.db import get_sessionmaker, session_scope

    token = make_key(auth_settings, "alice")
    login(api, token)
    assert api.get("/ui/jobs").status_code == 200
    with session_scope(get_sessionmaker(auth_settings.database_url)) as session:
        auth.revoke(session, token.split("_")[1])
    assert api.get("/ui/jobs").status_code == 303


def test_open_mode_needs_no_login(client: TestClient) -> None:
    page = client.get("/ui/jobs")
    assert page.status_code == 200 and "Log out" not in page.text
