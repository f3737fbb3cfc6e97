"""The self-contained HTML report: served at /jobs/{id}/report.html and written by the CLI."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from poisonscan.cli import main
from service.config import Settings
from tests.web.support import FAST_AC, poison_set, run_job, upload_poisoned
from tests.worker.support import settings_env

EXTERNAL = re.compile(r"""(https?:|//[a-z]|(?:src|href)=["']?/|<script|<link|url\()""", re.I)


def _gallery(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'class="suspect[^"]*" data-index="(\d+)"', html)]


def _check_self_contained(html: str, planted: set[int]) -> None:
    outside_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not EXTERNAL.search(outside_images), EXTERNAL.search(outside_images)
    shown = _gallery(html)
    assert len(shown) == 48 and set(shown[:24]) <= planted
    thumbs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(thumbs) == 48 * 4  # each suspect and its three same-class references
    assert Image.open(io.BytesIO(base64.b64decode(thumbs[0]))).size == (16, 16)
    for text in ("code version", "dataset sha256", "seed", "detector device", "ran for"):
        assert text in html
    assert html.count('<svg class="hist"') == 10 and '<svg class="roc"' in html


@pytest.mark.slow
def test_report_of_a_real_job_is_self_contained_with_its_gallery(
    client: TestClient,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset_id, poisoned = upload_poisoned(client, tmp_path)
    planted = poison_set(poisoned)
    job = run_job(client, settings, dataset_id, params=FAST_AC, ground_truth=sorted(planted))

    served = client.get(f"/jobs/{job['id']}/report.html")
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/html")
    _check_self_contained(served.text, planted)
    assert job["code_version"] in served.text

    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "report.html"
    assert main(["report", job["id"], "-o", str(out)]) == 0
    _check_self_contained(out.read_text(), planted)


def test_report_of_a_missing_job(
    client: TestClient,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    missing = client.get("/jobs/no-such-job/report.html")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "job no-such-job not found" in missing.text

    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    assert main(["report", "no-such-job", "-o", str(tmp_path / "r.html")]) == 2
    assert "job no-such-job not found" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
