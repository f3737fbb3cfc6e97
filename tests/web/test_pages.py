"""The ``/ui`` pages over a real app: HTML content, live fragments, downloads, HTML errors."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import pytest
from fastapi.testclient import TestClient

from detection.readers import read_dataset
from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from tests.service.support import npz_bytes, tiny_images, upload
from tests.web.support import FAST_AC, poison_set, run_job, upload_poisoned


def _indices(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'class="suspect[^"]*" data-index="(\d+)"', html)]


def _store_result(
    settings: Settings, job_id: str, scores: np.ndarray, summary: dict[str, Any]
) -> None:
    """Finish a job with given scores, as the worker's persist step does."""
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        repo.mark_job_running(session, job_id, "test")
        repo.replace_scores(session, job_id, scores, scores > 1.0)
        repo.mark_job_succeeded(session, job_id, summary, None)


@pytest.mark.slow
def test_job_page_of_a_real_job_shows_the_planted_poisons(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    dataset_id, poisoned = upload_poisoned(client, tmp_path)
    planted = poison_set(poisoned)
    job = run_job(client, settings, dataset_id, params=FAST_AC, ground_truth=sorted(planted))

    page = client.get(f"/ui/jobs/{job['id']}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert html.count('<svg class="hist"') == 10  # one histogram per digit class
    assert '<svg class="roc"' in html and "AUROC" in html
    shown = _indices(html)
    assert len(shown) == 24 and set(shown) <= planted  # the top suspects are the poisons
    assert f"/datasets/{dataset_id}/samples/{shown[0]}.png" in html
    assert client.get(f"/datasets/{dataset_id}/samples/{shown[0]}.png").status_code == 200
    assert "data-refresh" not in html  # a finished job does not poll

    second = client.get(f"/ui/jobs/{job['id']}?rank=25").text
    assert "ranks 25–48" in second and not set(_indices(second)) & set(shown)

    csv = pacsv.read_csv(io.BytesIO(client.get(f"/jobs/{job['id']}/scores.csv").content))
    kept = np.sort(np.asarray(csv["sample_index"])[~np.asarray(csv["flagged"])])
    listed = client.get(f"/ui/jobs/{job['id']}/cleansed.csv")
    assert listed.status_code == 200
    assert [int(v) for v in listed.text.split()[1:]] == kept.tolist()

    npz = client.get(f"/ui/jobs/{job['id']}/cleansed.npz")
    assert npz.status_code == 200
    path = tmp_path / "cleansed.npz"
    path.write_bytes(npz.content)
    cleansed = read_dataset(path)
    assert np.array_equal(cleansed.x, poisoned.x[kept])
    assert np.array_equal(cleansed.labels, poisoned.labels[kept])
    assert np.array_equal(cleansed.extra["source_index"], kept)


def test_jobs_list_filters_and_live_rows(client: TestClient, tmp_path: Path) -> None:
    dataset_id = upload(client, npz_bytes(*tiny_images(), tmp_path), name="tiny").json()["id"]
    job_id = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"}).json()["id"]

    html = client.get("/ui/jobs").text
    assert f'data-job-id="{job_id}"' in html and "tiny" in html
    assert 'data-refresh="/ui/jobs/rows?' in html
    assert f'data-job-id="{job_id}"' in client.get("/ui/jobs?state=queued&method=ss").text
    assert "match these filters" in client.get("/ui/jobs?state=failed").text
    rows = client.get(f"/ui/jobs/rows?dataset_id={dataset_id}")
    assert rows.text.startswith("<tbody") and f'data-job-id="{job_id}"' in rows.text

    job_page = client.get(f"/ui/jobs/{job_id}").text
    assert f'data-refresh="/ui/jobs/{job_id}/status?was_finished=false"' in job_page
    assert "/ui/static/ui.js" in job_page and client.get("/ui/static/ui.js").status_code == 200


def test_a_job_that_finishes_asks_the_page_to_reload(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    x, labels = tiny_images(n=30)
    dataset_id = upload(client, npz_bytes(x, labels, tmp_path)).json()["id"]
    job_id = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"}).json()["id"]
    assert "data-reload" not in client.get(f"/ui/jobs/{job_id}/status?was_finished=false").text

    _store_result(settings, job_id, np.linspace(0, 2, 30), {"n_flagged": 15})
    status = client.get(f"/ui/jobs/{job_id}/status?was_finished=false").text
    assert 'data-reload="1"' in status and "data-refresh" not in status


def test_feature_vector_jobs_get_the_pages_without_the_grid(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    feats = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    dataset_id = upload(client, npz_bytes(feats, np.arange(40) % 2, tmp_path)).json()["id"]
    job_id = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"}).json()["id"]
    classes = [{"label": c, "statistic": 0.5 + c, "suspected": c == 1} for c in range(2)]
    _store_result(
        settings, job_id, np.linspace(0, 2, 40), {"classes": classes, "target_classes": [1]}
    )

    html = client.get(f"/ui/jobs/{job_id}").text
    assert html.count('<svg class="hist"') == 2 and "feature vectors" in html
    assert "<img" not in html and 'class="suspect' not in html
    assert '<strong class="targets">1</strong>' in html


def test_errors_on_pages_are_html(client: TestClient, tmp_path: Path) -> None:
    dataset_id = upload(client, npz_bytes(*tiny_images(), tmp_path)).json()["id"]
    queued = client.post("/jobs", json={"dataset_id": dataset_id, "method": "ss"}).json()["id"]
    cases = {
        "/ui/jobs/no-such-job": 404,
        "/ui/jobs?state=bogus": 422,
        "/ui/jobs?offset=-1": 422,
        "/ui/nowhere": 404,
        f"/ui/jobs/{queued}/cleansed.csv": 409,
    }
    for url, status in cases.items():
        resp = client.get(url)
        assert resp.status_code == status, url
        assert resp.headers["content-type"].startswith("text/html"), url
        assert f"<h1>{status} " in resp.text
    assert "job no-such-job not found" in client.get("/ui/jobs/no-such-job").text
    # The JSON API keeps its problem+json errors.
    api = client.get("/jobs/no-such-job")
    assert api.headers["content-type"] == "application/problem+json"


def test_a_multi_method_job_page_links_each_score_set(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    dataset_id = upload(client, npz_bytes(*tiny_images(), tmp_path), name="tiny").json()["id"]
    body = {"dataset_id": dataset_id, "methods": ["ss", "ac"]}
    job_id = client.post("/jobs", json=body).json()["id"]
    rng = np.random.default_rng(0)
    sets = {m: rng.normal(size=60) for m in ("ss", "ac", "ensemble")}
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        repo.mark_job_running(session, job_id, "test")
        for method, s in sets.items():
            repo.insert_scores(session, job_id, method, s, s > 1.0)
        per_method = {m: {"n_flagged": int((s > 1.0).sum())} for m, s in sets.items()}
        summary = {"n_samples": 60, "n_flagged": 0, "methods": per_method}
        repo.mark_job_succeeded(session, job_id, summary, None)

    default = client.get(f"/ui/jobs/{job_id}").text
    assert "ss + ac" in default
    assert f'href="/ui/jobs/{job_id}?method=ac"' in default
    assert f'href="/ui/jobs/{job_id}?method=ensemble"' in default
    assert '<strong class="method current">ss</strong>' in default
    assert f"<strong>{int((sets['ss'] > 1.0).sum())}</strong> of 60" in default

    page = client.get(f"/ui/jobs/{job_id}", params={"method": "ensemble"})
    assert page.status_code == 200
    assert '<strong class="method current">ensemble</strong>' in page.text
    assert f"<strong>{int((sets['ensemble'] > 1.0).sum())}</strong> of 60" in page.text
    assert f"/jobs/{job_id}/scores.csv?method=ensemble" in page.text
    assert client.get(f"/ui/jobs/{job_id}", params={"method": "nope"}).status_code == 422
