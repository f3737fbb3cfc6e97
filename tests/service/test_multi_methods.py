"""Jobs naming several methods: validation at POST, cost, and scores selected by ``?method=``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from detection.metrics import rank_by_score
from detection.registry import parse_detector_params
from service import repository as repo
from service.config import Settings
from service.cost import sample_passes
from service.db import get_sessionmaker, session_scope
from tests.service.support import npz_bytes, tiny_images, upload

N = 120
PROBLEM = "application/problem+json"


@pytest.fixture
def dataset_id(client: TestClient, tmp_path: Path) -> str:
    resp = upload(client, npz_bytes(*tiny_images(n=N), tmp_path))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _post(client: TestClient, dataset_id: str, **body: Any) -> Any:
    return client.post("/jobs", json={"dataset_id": dataset_id, **body})


def _problem(resp: Any, status: int = 422) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = resp.json()
    return body


def test_several_methods_are_stored_with_params_by_name(
    client: TestClient, dataset_id: str, settings: Settings
) -> None:
    params = {"ss": {"budget": 0.1}}
    resp = _post(client, dataset_id, methods=["ss", "ac"], params=params)

    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["method"] == "ss"
    assert job["methods"] == ["ss", "ac"]
    assert job["score_methods"] == ["ss", "ac", "ensemble"]
    assert job["params"]["ss"]["budget"] == 0.1
    assert job["params"]["ac"] == parse_detector_params("ac", {}).model_dump(mode="json")
    with get_sessionmaker(settings.database_url)() as session:
        row = session.execute(
            text("SELECT method, methods FROM job WHERE id = :id"), {"id": job["id"]}
        ).one()
    methods = row[1] if isinstance(row[1], list) else json.loads(row[1])
    assert (row[0], methods) == ("ss", ["ss", "ac"])


def test_one_method_in_the_list_reads_params_as_its_own(
    client: TestClient, dataset_id: str
) -> None:
    job = _post(client, dataset_id, methods=["ss"], params={"budget": 0.1}).json()

    assert (job["method"], job["methods"], job["score_methods"]) == ("ss", ["ss"], ["ss"])
    assert job["params"]["budget"] == 0.1


def test_listing_ensemble_itself_adds_no_second_fusion(client: TestClient, dataset_id: str) -> None:
    job = _post(client, dataset_id, methods=["ensemble", "ss"]).json()

    assert job["score_methods"] == ["ensemble", "ss"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"method": "ss", "methods": ["ss"]}, ["body"]),
        ({}, ["body"]),
        ({"methods": []}, ["body", "methods"]),
        ({"methods": ["ss", "ss"]}, ["body"]),
        ({"methods": ["ss", "nope"]}, ["body", "methods", 1]),
        ({"methods": ["ss", "ac"], "params": {"spectre": {}}}, ["body", "params", "spectre"]),
        ({"methods": ["ss", "ac"], "params": {"ss": 3}}, ["body", "params", "ss"]),
        ({"methods": ["ss", "ac"], "params": {"ac": {"bogus": 1}}}, ["body", "params", "ac"]),
    ],
)
def test_bad_method_lists_are_422_problems(
    client: TestClient, dataset_id: str, body: dict[str, Any], loc: list[Any]
) -> None:
    problem = _problem(_post(client, dataset_id, **body))

    assert problem["errors"], problem
    assert problem["errors"][0]["loc"][: len(loc)] == loc


def test_cost_of_several_methods_is_their_sum() -> None:
    ss = parse_detector_params("ss", {}).model_dump(mode="json")
    ac = parse_detector_params("ac", {"base_model": {"epochs": 7}}).model_dump(mode="json")

    total = sample_passes({"ss": ss, "ac": ac}, 500)

    assert total == sample_passes(ss, 500) + sample_passes(ac, 500) > 0


# --- scores of several methods ----------------------------------------------


def _scores(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=N)


def _multi_job_with_scores(client: TestClient, dataset_id: str, settings: Settings) -> str:
    job_id = str(_post(client, dataset_id, methods=["ss", "ac"]).json()["id"])
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        for seed, method in enumerate(["ss", "ac", "ensemble"]):
            s = _scores(seed)
            assert repo.insert_scores(session, job_id, method, s, s > 1.0) == N
        assert repo.mark_job_running(session, job_id, "test")
        assert repo.mark_job_succeeded(session, job_id, {"n_samples": N, "n_flagged": 0}, None)
    return job_id


def _page(client: TestClient, job_id: str, **params: Any) -> dict[str, Any]:
    resp = client.get(f"/jobs/{job_id}/scores", params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_method_selects_the_scores_and_the_first_is_the_default(
    client: TestClient, dataset_id: str, settings: Settings
) -> None:
    job_id = _multi_job_with_scores(client, dataset_id, settings)

    default = _page(client, job_id, order="index", limit=N)
    for seed, method in enumerate(["ss", "ac", "ensemble"]):
        page = _page(client, job_id, order="index", limit=N, method=method)
        assert page["method"] == method
        assert [r["score"] for r in page["items"]] == _scores(seed).tolist()
        top = _page(client, job_id, limit=1, method=method)["items"][0]
        assert top["sample_index"] == int(np.argmax(_scores(seed)))
    assert default["method"] == "ss"
    assert default["items"] == _page(client, job_id, order="index", limit=N, method="ss")["items"]
    with get_sessionmaker(settings.database_url)() as session:
        assert [repo.count_scores(session, job_id, m) for m in ("ss", "ac", "ensemble")] == [N] * 3


def test_a_method_the_job_lacks_is_422_on_pages_and_exports(
    client: TestClient, dataset_id: str, settings: Settings
) -> None:
    job_id = _multi_job_with_scores(client, dataset_id, settings)

    for path in ("scores", "scores.csv", "scores.ndjson", "scores.parquet"):
        problem = _problem(client.get(f"/jobs/{job_id}/{path}", params={"method": "spectre"}))
        assert problem["errors"][0]["loc"] == ["query", "method"]
        assert problem["errors"][0]["ctx"]["expected"] == ["ss", "ac", "ensemble"]


def test_next_link_walks_every_page_and_cursors_keep_their_method(
    client: TestClient, dataset_id: str, settings: Settings
) -> None:
    job_id = _multi_job_with_scores(client, dataset_id, settings)

    resp = client.get(f"/jobs/{job_id}/scores", params={"method": "ac", "limit": 50})
    items = resp.json()["items"]
    assert resp.json()["limit"] == 50
    assert resp.headers["link"] == f'<{resp.json()["next"]}>; rel="next"'
    while resp.json()["next"] is not None:
        resp = client.get(resp.json()["next"])
        assert resp.status_code == 200, resp.text
        items += resp.json()["items"]
    assert "link" not in resp.headers
    assert [r["rank"] for r in items] == list(range(1, N + 1))
    ranks = rank_by_score(_scores(1))
    assert all(ranks[r["sample_index"]] == r["rank"] for r in items)
    cursor = _page(client, job_id, method="ac", limit=10)["next_cursor"]
    other = client.get(f"/jobs/{job_id}/scores", params={"method": "ss", "cursor": cursor})
    assert "method" in _problem(other)["detail"]


def test_a_limit_over_the_cap_is_refused_and_names_the_exports(
    client: TestClient, dataset_id: str, settings: Settings
) -> None:
    job_id = _multi_job_with_scores(client, dataset_id, settings)

    resp = client.get(f"/jobs/{job_id}/scores", params={"limit": settings.max_page_size + 1})

    problem = _problem(resp)
    assert "scores.ndjson" in problem["detail"]
    assert problem["errors"][0]["ctx"] == {"le": settings.max_page_size}


def test_ndjson_and_csv_exports_stream_every_row_of_the_method(
    client: TestClient, dataset_id: str, settings: Settings
) -> None:
    job_id = _multi_job_with_scores(client, dataset_id, settings)

    resp = client.get(f"/jobs/{job_id}/scores.ndjson", params={"method": "ensemble"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    assert resp.headers["x-scores-method"] == "ensemble"
    rows = [json.loads(line) for line in resp.text.splitlines()]
    assert [r["sample_index"] for r in rows] == list(range(N))
    assert [r["score"] for r in rows] == _scores(2).tolist()
    assert set(rows[0]) == {"sample_index", "score", "flagged", "rank", "source"}
    csv = pacsv.read_csv(io.BytesIO(client.get(f"/jobs/{job_id}/scores.csv").content))
    assert csv.column("score").to_pylist() == _scores(0).tolist()  # the default: ss
