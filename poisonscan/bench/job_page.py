"""Page weight and time to first render of the job page of a job with many scores.

``python -m poisonscan.bench.job_page [--n 50000]`` stores a CIFAR-shaped dataset
(random 32×32×3 images, 10 classes) and a succeeded job with N scores and ground
truth (as the worker would), serves the API with uvicorn, and measures:

* the HTML of ``/ui/jobs/{id}``: bytes (raw and gzip) and server time, on a cold
  dataset cache (first request) and warm (median of repeats);
* in Chromium (when ``--chromium`` exists): first contentful paint, DOMContentLoaded,
  load, and every byte transferred until load (HTML, CSS, JS, visible thumbnails).

Embedded SQLite by default; ``--database-url`` points it at PostgreSQL.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from detection.metrics import evaluate
from detection.readers import write_npz
from poisonscan.runtime import free_port
from service import datasets, jobs
from service import repository as repo
from service.config import Settings
from service.db import get_sessionmaker, session_scope
from service.migrate import upgrade_head
from service.queue import JobQueue
from service.schemas import JobCreate
from service.storage import LocalStorage

N_CLASSES = 10
POISON_RATE = 0.01


def store_job(settings: Settings, n: int, seed: int = 0) -> str:
    """A dataset of ``n`` random images and a succeeded ``ss`` job with ``n`` scores."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % N_CLASSES
    poison = np.sort(rng.choice(np.flatnonzero(labels != 0), int(n * POISON_RATE), replace=False))
    labels[poison] = 0
    scores = rng.normal(size=n)
    scores[poison] += 3.0
    flags = scores > 2.5
    factory = get_sessionmaker(settings.database_url)
    storage = LocalStorage(settings.storage_root, settings.max_upload_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.npz"
        write_npz(path, x, labels)
        with session_scope(factory) as session, path.open("rb") as fh:
            dataset = datasets.create(session, storage, fh, filename=path.name).dataset
    body = JobCreate(
        dataset_id=dataset.id, method="ss", ground_truth_poison_indices=poison.tolist()
    )
    with session_scope(factory) as session:
        job_id = jobs.create(session, JobQueue(settings, lambda _: None), body).id
    classes = [
        {
            "label": c,
            "n_samples": int((labels == c).sum()),
            "statistic": float(c == 0),
            "suspected": c == 0,
            "n_flagged": int(flags[labels == c].sum()),
        }
        for c in range(N_CLASSES)
    ]
    summary = {
        "n_samples": n,
        "n_flagged": int(flags.sum()),
        "target_classes": [0],
        "classes": classes,
    }
    metrics = json.loads(json.dumps(evaluate(scores, flags, poison), default=float))
    with session_scope(factory) as session:
        repo.mark_job_running(session, job_id, "bench")
        repo.replace_scores(session, job_id, scores, flags)
        repo.mark_job_succeeded(session, job_id, summary, metrics)
    return job_id


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    import uvicorn

    from service.main import create_app

    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def measure_html(url: str, repeats: int) -> dict[str, Any]:
    """Bytes and server time of the page's HTML: first (cold cache) and warm median."""
    times, body = [], b""
    with httpx.Client(timeout=300) as client:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            resp = client.get(url).raise_for_status()
            times.append(time.perf_counter() - start)
            body = resp.content
    return {
        "html_bytes": len(body),
        "html_gzip_bytes": len(gzip.compress(body)),
        "html_cold_s": round(times[0], 3),
        "html_warm_median_s": round(statistics.median(times[1:]), 3),
    }


BROWSER_METRICS = """async () => {
  const fcp = await new Promise((done) => {
    new PerformanceObserver((list) => {
      const e = list.getEntries().find((x) => x.name === 'first-contentful-paint');
      if (e) done(e.startTime);
    }).observe({ type: 'paint', buffered: true });
    setTimeout(() => done(null), 5000);
  });
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  return {
    ttfb_ms: nav.responseStart, dom_content_loaded_ms: nav.domContentLoadedEventEnd,
    first_contentful_paint_ms: fcp, load_ms: nav.loadEventEnd,
    transferred_bytes: nav.transferSize + res.reduce((s, r) => s + r.transferSize, 0),
    requests: 1 + res.length,
  };
}"""


def measure_browser(url: str, chromium: str, repeats: int) -> list[dict[str, Any]]:
    """Navigation timings in Chromium, each in a fresh context (no HTTP cache)."""
    from playwright.sync_api import sync_playwright

    runs = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(repeats):
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(url, wait_until="load")
            metrics = page.evaluate(BROWSER_METRICS)
            runs.append({k: None if v is None else round(v) for k, v in metrics.items()})
            page.context.close()
        browser.close()
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--database-url", default="")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), database_url=args.database_url, max_upload_bytes=2**31
        )
        upgrade_head(settings.database_url)
        start = time.perf_counter()
        job_id = store_job(settings, args.n)
        result: dict[str, Any] = {
            "n_scores": args.n,
            "setup_s": round(time.perf_counter() - start, 1),
        }
        with serving(settings) as base:
            url = f"{base}/ui/jobs/{job_id}"
            if Path(args.chromium).exists():
                runs = measure_browser(url, args.chromium, args.repeats)
                result["browser_first"] = runs[0]
                result["browser_median"] = {
                    k: statistics.median(r[k] for r in runs[1:] or runs if r[k] is not None)
                    for k in runs[0]
                }
            result.update(measure_html(url, args.repeats))
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
