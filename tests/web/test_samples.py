"""``GET /datasets/{id}/samples/{i}.png`` on stored datasets."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from tests.service.support import npz_bytes, upload


def _png(client: TestClient, dataset_id: str, index: int) -> np.ndarray:
    resp = client.get(f"/datasets/{dataset_id}/samples/{index}.png")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.content)))


def test_samples_decode_to_the_stored_pixels(client: TestClient, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 7, 6, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    rgb_id = upload(client, npz_bytes(rgb, np.arange(5) % 2, tmp_path)).json()["id"]
    gray_id = upload(client, npz_bytes(gray, np.arange(4) % 2, tmp_path)).json()["id"]

    assert np.array_equal(_png(client, rgb_id, 3), rgb[3])
    assert np.array_equal(_png(client, gray_id, 0), gray[0])
    assert np.array_equal(_png(client, gray_id, 3), gray[3])


def test_bad_sample_requests_are_problems(client: TestClient, tmp_path: Path) -> None:
    x = np.zeros((4, 8, 8, 1), dtype=np.uint8)
    images = upload(client, npz_bytes(x, np.arange(4) % 2, tmp_path)).json()["id"]
    feats = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    vectors = upload(client, npz_bytes(feats, np.arange(6) % 2, tmp_path)).json()["id"]

    cases = {
        f"/datasets/{images}/samples/4.png": 404,
        f"/datasets/{images}/samples/-1.png": 404,
        f"/datasets/{images}/samples/one.png": 422,
        "/datasets/no-such-id/samples/0.png": 404,
        f"/datasets/{vectors}/samples/0.png": 422,
    }
    for url, status in cases.items():
        resp = client.get(url)
        assert resp.status_code == status, (url, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["status"] == status
    assert "has 4" in client.get(f"/datasets/{images}/samples/4.png").json()["detail"]
