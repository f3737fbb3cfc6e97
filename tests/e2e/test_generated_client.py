"""The served OpenAPI document is the contract: a generated client drives the whole flow."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from service.config import Settings
from tests.e2e.support import serve, threaded_app
from tests.service.support import npz_bytes
from tests.worker.support import planted_digits

PACKAGE = "poisonscan_generated"
CONFIG = """
package_name_override: poisonscan_generated
post_hooks: []
content_type_overrides:
  application/vnd.apache.parquet: application/octet-stream
  application/x-ndjson: text/plain
  image/png: application/octet-stream
"""
FINISHED = {"succeeded", "failed", "cancelled"}


def generate(url: str, out: Path) -> Any:
    """Fetch ``/openapi.json`` and generate a client package from it with openapi-python-client."""
    doc = out / "openapi.json"
    doc.write_bytes(httpx.get(f"{url}/openapi.json").raise_for_status().content)
    (out / "config.yaml").write_text(CONFIG)
    cmd = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(doc)]
    cmd += ["--output-path", str(out / PACKAGE), "--meta", "none", "--config"]
    cmd += [str(out / "config.yaml")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    return importlib.import_module(PACKAGE)


@pytest.mark.slow
def test_a_generated_client_uploads_runs_polls_and_pages(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    planted = planted_digits(rate=0.05)
    data = npz_bytes(planted.x[:600], planted.labels[:600], tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with serve(threaded_app(settings)) as url:
        generate(url, tmp_path)
        from poisonscan_generated import Client
        from poisonscan_generated.api.datasets import create_dataset
        from poisonscan_generated.api.jobs import create_job, delete_job, get_job
        from poisonscan_generated.api.scores import export_scores_parquet, list_scores
        from poisonscan_generated.models import (
            BodyCreateDataset,
            JobCreate,
            JobState,
            Problem,
            ScorePage,
            SpectralParams,
        )
        from poisonscan_generated.types import File

        client = Client(base_url=url, raise_on_unexpected_status=True, timeout=httpx.Timeout(60.0))
        upload = BodyCreateDataset(file=File(payload=io.BytesIO(data), file_name="digits.npz"))
        created = create_dataset.sync_detailed(client=client, body=upload)
        again = create_dataset.sync_detailed(
            client=client,
            body=BodyCreateDataset(file=File(payload=io.BytesIO(data), file_name="d.npz")),
        )
        params = SpectralParams.from_dict({"budget": 0.2, "base_model": {"epochs": 2}})
        body = JobCreate(dataset_id=created.parsed.id, method="ss", params=params)
        posted = create_job.sync_detailed(client=client, body=body, idempotency_key="gen-1")
        replayed = create_job.sync_detailed(client=client, body=body, idempotency_key="gen-1")
        job_id = posted.parsed.id
        job = get_job.sync(job_id, client=client)
        deadline = time.monotonic() + 300
        while job.state.value not in FINISHED and time.monotonic() < deadline:
            time.sleep(0.3)
            job = get_job.sync(job_id, client=client)
        first = list_scores.sync(job_id, client=client, limit=50)
        second = list_scores.sync(job_id, client=client, limit=50, cursor=first.next_cursor)
        too_many = list_scores.sync_detailed(job_id, client=client, limit=10**6)
        missing = get_job.sync_detailed("missing", client=client)
        bad = create_job.sync_detailed(
            client=client, body=JobCreate(dataset_id=created.parsed.id, method="nope")
        )
        parquet = export_scores_parquet.sync_detailed(job_id, client=client)
        deleted = delete_job.sync_detailed(job_id, client=client)
        gone = get_job.sync_detailed(job_id, client=client)

    assert (created.status_code, again.status_code) == (201, 200)
    assert again.parsed.id == created.parsed.id
    assert posted.status_code == 202 and posted.parsed.state == JobState.QUEUED
    assert replayed.parsed.id == job_id
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.summary.n_samples == 600
    assert isinstance(first, ScorePage) and len(first.items) == 50
    assert [s.rank for s in first.items + second.items] == list(range(1, 101))
    for resp, status in ((too_many, 422), (missing, 404), (bad, 422)):
        assert resp.status_code == status
        assert isinstance(resp.parsed, Problem) and resp.parsed.status == status
    assert too_many.parsed.errors[0].loc == ["query", "limit"]
    assert parquet.status_code == 200 and parquet.content[:4] == b"PAR1"
    assert (deleted.status_code, gone.status_code) == (204, 404)
