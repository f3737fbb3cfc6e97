"""Bulk score writes: binary COPY on PostgreSQL, executemany on SQLite, the same rows back."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from sqlalchemy import text

from detection.metrics import rank_by_score
from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from tests.service.support import npz_bytes, tiny_images, upload

N_LARGE = 100_000


def _scores(n: int) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    rng = np.random.default_rng(7)
    s = rng.normal(size=n)
    s[:: max(1, n // 100)] = 0.5  # ties: broken by the lower sample index
    s[1] = np.finfo(np.float64).max  # extreme but finite values survive
    s[2] = -np.finfo(np.float64).tiny
    return s, s > 1.5


def test_copy_payload_is_postgres_binary_format() -> None:
    s, f = _scores(3)

    payload = repo.copy_payload("job-1", "ss", s, f)

    assert payload.startswith(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
    assert payload.endswith(struct.pack(">h", -1))
    # per row: field count + 6 (length, value) pairs
    row = 2 + (4 + 5) + (4 + 2) + (4 + 4) + (4 + 8) + (4 + 1) + (4 + 4)
    assert len(payload) == 19 + 3 * row + 2
    first = payload[19 : 19 + row]
    assert struct.unpack(">h", first[:2]) == (6,)
    assert first[2:11] == struct.pack(">i", 5) + b"job-1"
    assert struct.unpack(">d", first[-21:-13]) == (s[0],)


def _job(client: TestClient, tmp_path: Path) -> str:
    dataset_id = upload(client, npz_bytes(*tiny_images(), tmp_path)).json()["id"]
    resp = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


@pytest.mark.slow
def test_100k_rows_come_back_exactly(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    job_id = _job(client, tmp_path)
    s, f = _scores(N_LARGE)
    factory = get_sessionmaker(settings.database_url)

    with session_scope(factory) as session:
        assert repo.replace_scores(session, job_id, s, f) == N_LARGE
        assert repo.insert_scores(session, job_id, "ac", -s, ~f) == N_LARGE
    with session_scope(factory) as session:  # a retry of one method replaces only its rows
        assert repo.replace_scores(session, job_id, s, f, method="ss") == N_LARGE

    with factory() as session:
        sql = text(
            "SELECT sample_index, score, flagged, rank FROM sample_score "
            "WHERE job_id = :j AND method = :m ORDER BY sample_index"
        )
        for method, scores, flags in (("ss", s, f), ("ac", -s, ~f)):
            rows = session.execute(sql, {"j": job_id, "m": method}).all()
            assert len(rows) == N_LARGE == repo.count_scores(session, job_id, method)
            got = np.array([r[1] for r in rows])
            assert [r[0] for r in rows] == list(range(N_LARGE))
            assert np.array_equal(got, scores)  # bit-exact float64
            assert np.array_equal(np.array([bool(r[2]) for r in rows]), flags)
            assert np.array_equal(np.array([r[3] for r in rows]), rank_by_score(scores))
        assert repo.count_scores(session, job_id) == 2 * N_LARGE
