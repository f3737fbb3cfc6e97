"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against uvicorn.

Embedded mode (SQLite + local storage); jobs run in a thread of the server
process with the worker's own ``run_job``. Screenshots go to
``$POISONSCAN_TEST_ARTIFACTS`` (default: the test's tmp dir) and are never committed.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from poisonscan.cli import main
from poisonscan.runtime import free_port
from service.config import Settings
from service.main import create_app
from tests.service.support import npz_bytes
from tests.web.support import poison_set, poisoned_digits, run_job
from tests.worker.support import settings_env
from worker import jobs as worker_jobs

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("POISONSCAN_CHROMIUM", "/usr/bin/chromium")
# Long enough (a few seconds) that the pages see the job running.
# ~7 s on a quiet core (8,000 small steps): long enough for the list to show it running.
SLOW_AC = {"base_model": {"arch": "mlp", "epochs": 80, "batch_size": 16}}


@pytest.fixture
def backend() -> str:
    """Embedded mode: SQLite only (the Postgres path serves the same pages)."""
    return "sqlite"


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    root = Path(os.environ.get("POISONSCAN_TEST_ARTIFACTS", tmp_path / "artifacts"))
    path: Path = root / str(request.node.name)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    """uvicorn in a thread; ``POST /jobs`` runs the job in another thread of this process."""

    def enqueue(job_id: str) -> None:
        threading.Thread(target=worker_jobs.run_job, args=(job_id, settings), daemon=True).start()

    app = create_app(settings, enqueue=enqueue)
    app.state.ui_refresh_ms = 300
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_dashboard_follows_a_job_and_shows_its_poisons(
    server: str, browser: Any, tmp_path: Path, artifacts: Path
) -> None:
    poisoned = poisoned_digits()
    planted = poison_set(poisoned)
    api = httpx.Client(base_url=server, timeout=30)
    files = {
        "file": ("digits-badnet.npz", io.BytesIO(npz_bytes(poisoned.x, poisoned.labels, tmp_path)))
    }
    dataset_id = api.post("/datasets", files=files).json()["id"]

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{server}/ui/jobs")
    assert "No jobs" in page.inner_text("#job-rows")
    page.evaluate("window.notReloaded = true")

    body = {"dataset_id": dataset_id, "method": "ac", "params": SLOW_AC}
    body["ground_truth_poison_indices"] = sorted(planted)
    job_id = api.post("/jobs", json=body).json()["id"]

    # The list picks the job up and follows it while it runs, without a reload.
    row = page.locator(f'tr.job[data-job-id="{job_id}"]')
    row.wait_for(timeout=15_000)
    seen: list[tuple[str, str]] = []

    def followed() -> bool:
        state = page.get_attribute(f'tr.job[data-job-id="{job_id}"]', "data-state") or ""
        stage = page.inner_text(f'tr.job[data-job-id="{job_id}"] td.stage')
        if not seen or seen[-1] != (state, stage):
            seen.append((state, stage))
        # The worker may start the job before the row first shows: then wait for its next change.
        running = any(s == "running" and st not in ("", "load") for s, st in seen)
        return running and len(seen) >= 2

    _wait_until(followed, 120, "the jobs list to show the job running and then changing")
    page.screenshot(path=artifacts / "jobs-running.png", full_page=True)
    assert page.evaluate("window.notReloaded") is True
    assert len(seen) >= 2, seen  # the same row, updated in place

    # The job page polls its status and reloads with the results once the job succeeded.
    page.click(f'tr.job[data-job-id="{job_id}"] a')
    page.wait_for_url(f"**/ui/jobs/{job_id}")
    page.locator("svg.hist").first.wait_for(timeout=120_000)
    page.wait_for_load_state("networkidle")
    assert page.get_attribute("#job-status", "data-state") == "succeeded"
    assert page.locator("svg.hist").count() == 10
    assert page.locator("svg.roc").count() == 1
    suspects = page.locator("figure.suspect")
    assert suspects.count() == 24
    shown = [int(i) for i in suspects.evaluate_all("els => els.map(e => e.dataset.index)")]
    assert set(shown) <= planted, sorted(set(shown) - planted)
    # Thumbnails load lazily: scroll through the grid, then every one must have decoded.
    page.locator("figure.suspect").last.scroll_into_view_if_needed()
    page.wait_for_function(
        "[...document.querySelectorAll('figure.suspect img')]"
        ".every(i => i.complete && i.naturalWidth === 16)",
        timeout=30_000,
    )
    page.screenshot(path=artifacts / "job-finished.png", full_page=True)

    # Paging through the ranks.
    page.click("nav.pager a.next")
    page.wait_for_url(f"**/ui/jobs/{job_id}?rank=25")
    nxt = [
        int(i)
        for i in page.locator("figure.suspect").evaluate_all("els => els.map(e => e.dataset.index)")
    ]
    assert len(nxt) == 24 and not set(nxt) & set(shown)
    page.screenshot(path=artifacts / "job-ranks-25.png", full_page=True)
    api.close()


@pytest.mark.slow
def test_report_of_a_ct_job_opens_offline_with_its_gallery(
    client: Any,
    settings: Settings,
    browser: Any,
    tmp_path: Path,
    artifacts: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    poisoned = poisoned_digits()
    files = {"file": ("digits.npz", io.BytesIO(npz_bytes(poisoned.x, poisoned.labels, tmp_path)))}
    dataset_id = client.post("/datasets", files=files).json()["id"]
    # A CPU-quick CT (MLP): the report's content does not depend on how well it detects.
    job = run_job(client, settings, dataset_id, method="ct", params={"arch": "mlp"})
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    out = artifacts / "report.html"
    assert main(["report", job["id"], "-o", str(out)]) == 0

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requested: list[str] = []

    def block(route: Any) -> None:
        requested.append(route.request.url)
        route.abort()

    page.route("http*://**/*", block)
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    assert requested == []  # nothing but the file itself
    assert page.locator("figure.suspect").count() == 48
    assert page.evaluate(
        "[...document.images].length === 192 &&"
        "[...document.images].every(i => i.complete && i.naturalWidth === 16)"
    )
    assert page.locator("svg.hist").count() == 10
    assert "likelihood ratio" in page.inner_text("table.classes")
    page.screenshot(path=artifacts / "report.png", full_page=True)
