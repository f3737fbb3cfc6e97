"""Per-key quotas on SQLite and PostgreSQL: 429 + Retry-After, and nothing stored."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.config import Settings
from service.db import get_sessionmaker
from service.main import create_app
from service.models import Dataset, Job
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
    return settings.model_copy(update={"auth_enabled": True, "quota_retry_after_s": 17})


@pytest.fixture
def api(auth_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(auth_settings), raise_server_exceptions=False) as c:
        yield c


def count(settings: Settings, model: type[Dataset] | type[Job]) -> int:
    with get_sessionmaker(settings.database_url)() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def assert_429(resp: httpx.Response) -> int:
    assert resp.status_code == 429, resp.text
    assert resp.headers["content-type"] == PROBLEM
    assert resp.json()["detail"].startswith("quota:")
    retry_after = int(resp.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def test_active_jobs_quota(auth_settings: Settings, api: TestClient, tmp_path: Path) -> None:
    token = make_key(auth_settings, "acme", max_active_jobs=2)
    dataset_id = post_dataset(api, token, data_bytes(tmp_path)).json()["id"]
    first = post_job(api, token, dataset_id)
    assert first.status_code == 202 and post_job(api, token, dataset_id).status_code == 202

    assert assert_429(post_job(api, token, dataset_id)) == 17
    assert count(auth_settings, Job) == 2  # nothing stored for the refused job
    # Another key of the same tenant has its own count; a finished job frees a slot.
    other = make_key(auth_settings, "acme", max_active_jobs=1)
    assert post_job(api, other, dataset_id).status_code == 202
    api.post(f"/jobs/{first.json()['id']}/cancel", headers=bearer(token))
    assert post_job(api, token, dataset_id).status_code == 202
    assert count(auth_settings, Job) == 4


def test_settings_default_applies_without_an_override(
    auth_settings: Settings, tmp_path: Path
) -> None:
    settings = auth_settings.model_copy(update={"quota_max_active_jobs": 1})
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        token = make_key(settings, "acme")
        unlimited = make_key(settings, "acme", max_active_jobs=0)  # 0: no limit
        dataset_id = post_dataset(api, token, data_bytes(tmp_path)).json()["id"]
        assert post_job(api, token, dataset_id).status_code == 202
        assert_429(post_job(api, token, dataset_id))
        for _ in range(3):
            assert post_job(api, unlimited, dataset_id).status_code == 202


def test_uploads_per_minute_quota(auth_settings: Settings, api: TestClient, tmp_path: Path) -> None:
    token = make_key(auth_settings, "acme", max_uploads_per_minute=2)
    first, second = data_bytes(tmp_path, seed=1), data_bytes(tmp_path, seed=2)
    assert post_dataset(api, token, first).status_code == 201
    assert post_dataset(api, token, second).status_code == 201
    files_before = stored_files(auth_settings)

    retry_after = assert_429(post_dataset(api, token, data_bytes(tmp_path, seed=3)))
    assert retry_after <= 60
    assert count(auth_settings, Dataset) == 2
    assert stored_files(auth_settings) == files_before  # no file, no staged leftover
    # The same bytes again store nothing new: returned, not refused.
    assert post_dataset(api, token, first).status_code == 200


def test_stored_bytes_quota(auth_settings: Settings, api: TestClient, tmp_path: Path) -> None:
    first, second = data_bytes(tmp_path, seed=1), data_bytes(tmp_path, seed=2)
    token = make_key(auth_settings, "acme", max_stored_bytes=len(first) + len(second) - 1)
    assert post_dataset(api, token, first).status_code == 201
    files_before = stored_files(auth_settings)

    resp = post_dataset(api, token, second)
    assert assert_429(resp) == 17
    assert "bytes stored" in resp.json()["detail"]
    assert count(auth_settings, Dataset) == 1
    assert stored_files(auth_settings) == files_before
    # Deleting frees the bytes.
    dataset_id = api.get("/datasets", headers=bearer(token)).json()["items"][0]["id"]
    assert api.delete(f"/datasets/{dataset_id}", headers=bearer(token)).status_code == 204
    assert post_dataset(api, token, second).status_code == 201


def test_concurrent_submits_cannot_pass_the_last_slot(
    auth_settings: Settings, api: TestClient, tmp_path: Path
) -> None:
    token = make_key(auth_settings, "acme", max_active_jobs=2)
    dataset_id = post_dataset(api, token, data_bytes(tmp_path)).json()["id"]
    with ThreadPoolExecutor(6) as pool:
        resps = list(pool.map(lambda _: post_job(api, token, dataset_id), range(6)))
    codes = sorted(r.status_code for r in resps)
    assert codes.count(202) == 2, [r.text for r in resps]
    assert count(auth_settings, Job) == 2


def test_concurrent_uploads_cannot_pass_the_rate(
    auth_settings: Settings, api: TestClient, tmp_path: Path
) -> None:
    token = make_key(auth_settings, "acme", max_uploads_per_minute=2)
    blobs = [data_bytes(tmp_path, seed=s) for s in range(5)]
    with ThreadPoolExecutor(5) as pool:
        codes = sorted(pool.map(lambda b: post_dataset(api, token, b).status_code, blobs))
    assert codes == [201, 201, 429, 429, 429]
    assert count(auth_settings, Dataset) == 2
    assert len(stored_files(auth_settings)) == 2
