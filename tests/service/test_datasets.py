"""POST/GET /datasets on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import zipfile
from http import HTTPStatus
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.config import Settings
from service.db import get_sessionmaker
from service.models import Dataset, DatasetSample
from tests.service.support import (
    image_zip,
    npz_bytes,
    stored_files,
    tiny_images,
    upload,
    zip_members,
)

PROBLEM = "application/problem+json"


def dataset_rows(settings: Settings) -> int:
    with get_sessionmaker(settings.database_url)() as session:
        return session.scalar(select(func.count()).select_from(Dataset)) or 0


def test_upload_creates_row_and_content_addressed_file(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    x, labels = tiny_images(n=60, n_classes=3)
    data = npz_bytes(x, labels, tmp_path)

    resp = upload(client, data, name="tiny")

    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["name"] == "tiny"
    assert body["format"] == "npz"
    assert body["n_samples"] == 60
    assert body["sample_shape"] == [8, 8, 1]
    assert body["n_classes"] == 3
    assert body["class_counts"] == [20, 20, 20]
    assert body["size_bytes"] == len(data)
    sha = body["sha256"]
    assert resp.headers["location"] == f"/datasets/{body['id']}"
    assert stored_files(settings) == [settings.storage_root / sha[:2] / f"{sha}.npz"]
    assert (settings.storage_root / sha[:2] / f"{sha}.npz").read_bytes() == data
    assert dataset_rows(settings) == 1
    assert client.get(f"/datasets/{body['id']}").json() == body


def test_same_bytes_return_the_existing_dataset(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    data = npz_bytes(*tiny_images(), tmp_path)
    first = upload(client, data, filename="a.npz")
    second = upload(client, data, filename="b.npz", name="other name")

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert dataset_rows(settings) == 1
    assert len(stored_files(settings)) == 1


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _object_array_npz() -> bytes:
    buf = io.BytesIO()
    x = np.empty(4, dtype=object)
    x[:] = [{"a": 1}, None, "s", 3]
    np.savez(buf, x=x, y=np.arange(4))
    return buf.getvalue()


def _csv_named_npz() -> bytes:
    return b"f0,f1,label\n0.1,0.2,0\n0.3,0.4,1\n"


def _zip_without_images() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    return buf.getvalue()


def test_invalid_uploads_are_422_and_leave_nothing(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    good = npz_bytes(*tiny_images(), tmp_path)
    cases = {
        "truncated.npz": _truncated(good),
        "objects.npz": _object_array_npz(),
        "table.npz": _csv_named_npz(),
        "empty.zip": _zip_without_images(),
        "random.bin": bytes(range(256)) * 4,
    }
    for filename, data in cases.items():
        resp = upload(client, data, filename=filename)

        assert resp.status_code == 422, (filename, resp.text)
        assert resp.headers["content-type"] == PROBLEM
        problem = resp.json()
        assert problem["status"] == 422
        assert problem["title"] == HTTPStatus.UNPROCESSABLE_ENTITY.phrase
        assert problem["instance"] == "/datasets"
        assert problem["detail"].startswith("invalid dataset")
    assert dataset_rows(settings) == 0
    assert stored_files(settings) == []


def test_upload_over_the_limit_is_413_and_leaves_nothing(
    client: TestClient, settings: Settings
) -> None:
    data = b"\0" * (settings.max_upload_bytes + 1)

    resp = upload(client, data, filename="big.npz")

    assert resp.status_code == 413
    assert resp.headers["content-type"] == PROBLEM
    assert dataset_rows(settings) == 0
    assert stored_files(settings) == []


def test_oversized_request_is_refused_before_parsing(
    client: TestClient, settings: Settings
) -> None:
    data = b"\0" * (settings.max_upload_bytes + 128 * 1024)

    resp = upload(client, data, filename="huge.npz")

    assert resp.status_code == 413
    assert resp.json()["detail"].startswith("request body exceeds")
    assert stored_files(settings) == []


def test_missing_file_is_a_validation_problem(client: TestClient) -> None:
    resp = client.post("/datasets", data={"name": "x"})

    assert resp.status_code == 422
    assert resp.headers["content-type"] == PROBLEM
    assert any(err["loc"] == ["body", "file"] for err in resp.json()["errors"])


def test_get_unknown_dataset_is_404_problem(client: TestClient) -> None:
    resp = client.get("/datasets/does-not-exist")

    assert resp.status_code == 404
    assert resp.headers["content-type"] == PROBLEM
    assert resp.json()["detail"] == "dataset does-not-exist not found"


def test_list_datasets_pages(client: TestClient, tmp_path: Path) -> None:
    ids = {upload(client, npz_bytes(*tiny_images(seed=s), tmp_path)).json()["id"] for s in range(3)}

    first = client.get("/datasets", params={"limit": 2}).json()
    second = client.get("/datasets", params={"limit": 2, "offset": 2}).json()

    assert first["total"] == second["total"] == 3
    assert len(first["items"]) == 2 and len(second["items"]) == 1
    assert {d["id"] for d in first["items"] + second["items"]} == ids


def test_image_folder_upload_keeps_class_names_and_sample_paths(
    client: TestClient, settings: Settings
) -> None:
    data = image_zip(n_per_class=3, classes=("dog", "cat"))

    resp = upload(client, data, filename="pets.zip")

    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["format"], body["n_samples"]) == ("zip", 6)
    assert body["class_names"] == ["cat", "dog"]
    with get_sessionmaker(settings.database_url)() as session:
        rows = session.execute(
            select(DatasetSample.sample_index, DatasetSample.source)
            .where(DatasetSample.dataset_id == body["id"])
            .order_by(DatasetSample.sample_index)
        ).all()
    assert [src for _, src in rows] == zip_members(data)
    assert [i for i, _ in rows] == list(range(6))


def test_row_datasets_store_no_sample_paths(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    body = upload(client, npz_bytes(*tiny_images(), tmp_path)).json()

    assert body["class_names"] is None
    with get_sessionmaker(settings.database_url)() as session:
        assert session.scalar(select(func.count()).select_from(DatasetSample)) == 0
