"""The job-page benchmark runs end to end (small N, no browser) and reports its numbers."""

from __future__ import annotations

import json
from pathlib import Path

from poisonscan.bench import job_page


def test_job_page_bench_measures_the_page(tmp_path: Path) -> None:
    out = tmp_path / "job_page.json"
    argv = ["--n", "300", "--repeats", "1", "--chromium", str(tmp_path / "none"), "--out", str(out)]
    assert job_page.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["n_scores"] == 300
    assert result["html_bytes"] > 10_000 and 0 < result["html_gzip_bytes"] < result["html_bytes"]
    assert result["html_warm_median_s"] > 0 and "browser_first" not in result
