"""Score storage (delete + COPY / executemany), keyset pages and streamed exports."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from sqlalchemy import text

from detection.metrics import rank_by_score
from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from tests.service.support import image_zip, npz_bytes, tiny_images, upload, zip_members

N = 257
Scores = tuple[NDArray[np.float64], NDArray[np.bool_]]


@pytest.fixture
def scores() -> Scores:
    rng = np.random.default_rng(0)
    s = rng.normal(size=N)
    s[[3, 4, 5]] = 1.25  # ties break by sample index
    return s, s > 1.0


def _finished_job(client: TestClient, tmp_path: Path) -> str:
    dataset_id = upload(client, npz_bytes(*tiny_images(n=N), tmp_path)).json()["id"]
    job_id: str = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"}).json()["id"]
    return job_id


def _store(settings: Settings, job_id: str, s: NDArray[np.float64], f: NDArray[np.bool_]) -> int:
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        n = repo.replace_scores(session, job_id, s, f)
        assert repo.mark_job_running(session, job_id, "test")
        assert repo.mark_job_succeeded(session, job_id, {"n_samples": n}, None)
    return n


def _rows(settings: Settings, job_id: str) -> list[tuple[int, float, bool, int]]:
    with get_sessionmaker(settings.database_url)() as session:
        result = session.execute(
            text(
                "SELECT sample_index, score, flagged, rank FROM sample_score "
                "WHERE job_id = :j ORDER BY sample_index"
            ),
            {"j": job_id},
        )
        return [(int(i), float(s), bool(f), int(r)) for i, s, f, r in result]


def test_rank_scores_puts_the_most_suspicious_first() -> None:
    ranks = rank_by_score(np.array([0.5, 2.0, -1.0, 2.0]))

    assert ranks.tolist() == [3, 1, 4, 2]


def test_replace_scores_writes_every_sample_once(
    client: TestClient,
    settings: Settings,
    tmp_path: Path,
    scores: tuple[NDArray[np.float64], NDArray[np.bool_]],
) -> None:
    s, f = scores
    job_id = _finished_job(client, tmp_path)

    _store(settings, job_id, s, f)
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        repo.replace_scores(session, job_id, s[::-1].copy(), f[::-1].copy())  # a retry
    rows = _rows(settings, job_id)

    assert [r[0] for r in rows] == list(range(N))
    np.testing.assert_array_equal([r[1] for r in rows], s[::-1])
    assert [r[2] for r in rows] == f[::-1].tolist()
    assert [r[3] for r in rows] == rank_by_score(s[::-1]).tolist()


def test_scores_page_through_every_sample_in_rank_order(
    client: TestClient,
    settings: Settings,
    tmp_path: Path,
    scores: tuple[NDArray[np.float64], NDArray[np.bool_]],
) -> None:
    s, f = scores
    job_id = _finished_job(client, tmp_path)
    _store(settings, job_id, s, f)

    items, cursor, pages = [], None, 0
    while True:
        params = {"limit": 50} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"/jobs/{job_id}/scores", params=params).json()
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == 6
    assert [it["rank"] for it in items] == list(range(1, N + 1))
    assert [it["sample_index"] for it in items] == np.lexsort((np.arange(N), -s)).tolist()
    order = [it["sample_index"] for it in items]
    tied = [order.index(i) for i in (3, 4, 5)]
    assert tied == list(range(tied[0], tied[0] + 3))  # equal scores: lower index first
    got = np.array([it["score"] for it in items])
    assert np.all(np.diff(got) <= 0)


def test_flagged_filter_and_index_order(
    client: TestClient,
    settings: Settings,
    tmp_path: Path,
    scores: tuple[NDArray[np.float64], NDArray[np.bool_]],
) -> None:
    s, f = scores
    job_id = _finished_job(client, tmp_path)
    _store(settings, job_id, s, f)

    flagged = client.get(f"/jobs/{job_id}/scores", params={"flagged": True, "limit": 1000}).json()
    by_index = client.get(f"/jobs/{job_id}/scores", params={"order": "index", "limit": 10}).json()
    second = client.get(
        f"/jobs/{job_id}/scores",
        params={"order": "index", "limit": 10, "cursor": by_index["next_cursor"]},
    ).json()
    wrong_query = client.get(f"/jobs/{job_id}/scores", params={"cursor": by_index["next_cursor"]})
    garbage = client.get(f"/jobs/{job_id}/scores", params={"cursor": "!!!"})

    assert sorted(it["sample_index"] for it in flagged["items"]) == np.flatnonzero(f).tolist()
    assert flagged["next_cursor"] is None
    assert [it["sample_index"] for it in by_index["items"] + second["items"]] == list(range(20))
    assert wrong_query.status_code == garbage.status_code == 422


def test_csv_and_parquet_exports_hold_every_row(
    client: TestClient,
    settings: Settings,
    tmp_path: Path,
    scores: tuple[NDArray[np.float64], NDArray[np.bool_]],
) -> None:
    s, f = scores
    job_id = _finished_job(client, tmp_path)
    _store(settings, job_id, s, f)

    csv_resp = client.get(f"/jobs/{job_id}/scores.csv")
    pq_resp = client.get(f"/jobs/{job_id}/scores.parquet", params={"order": "score_desc"})
    csv_table = pacsv.read_csv(io.BytesIO(csv_resp.content))
    pq_table = pq.read_table(io.BytesIO(pq_resp.content))

    assert csv_resp.headers["content-type"].startswith("text/csv")
    assert csv_table.column_names == ["sample_index", "score", "flagged", "rank", "source"]
    assert pq_table["source"].to_pylist()[:3] == [str(i) for i in np.argsort(-s, kind="stable")[:3]]
    assert csv_table.num_rows == pq_table.num_rows == N
    np.testing.assert_array_equal(csv_table["sample_index"].to_numpy(), np.arange(N))
    np.testing.assert_array_equal(csv_table["score"].to_numpy(), s)
    np.testing.assert_array_equal(csv_table["flagged"].to_numpy(zero_copy_only=False), f)
    np.testing.assert_array_equal(pq_table["rank"].to_numpy(), np.arange(1, N + 1))


def test_scores_and_exports_name_each_sample_by_its_archive_path(
    client: TestClient, settings: Settings
) -> None:
    data = image_zip(n_per_class=4, classes=("cat", "dog"))
    dataset_id = upload(client, data, filename="pets.zip").json()["id"]
    job_id = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"}).json()["id"]
    s = np.linspace(0.0, 1.0, 8)
    _store(settings, job_id, s, s > 0.8)
    members = zip_members(data)

    page = client.get(f"/jobs/{job_id}/scores", params={"limit": 3}).json()
    by_index = client.get(f"/jobs/{job_id}/scores", params={"order": "index", "limit": 8}).json()
    parquet = pq.read_table(io.BytesIO(client.get(f"/jobs/{job_id}/scores.parquet").content))
    csv = pacsv.read_csv(io.BytesIO(client.get(f"/jobs/{job_id}/scores.csv").content))

    assert [it["source"] for it in page["items"]] == members[::-1][:3]
    assert [it["source"] for it in by_index["items"]] == members
    assert parquet["source"].to_pylist() == csv["source"].to_pylist() == members
