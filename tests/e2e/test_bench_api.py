"""``poisonscan bench --api`` reports what the local bench reports on the same run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
from fastapi.testclient import TestClient

from detection.types import DetectionResult
from poisonscan.bench import Runner, Scored, local_runner, run_bench
from poisonscan.bench.api import ApiRunner
from poisonscan.cli.scan import write_scores
from poisonscan.client import read_table
from service.config import Settings
from service.main import create_app
from worker import jobs

SS = {"base_model": {"arch": "mlp", "epochs": 2}, "budget": 0.2}


def in_process_app(settings: Settings) -> TestClient:
    """The API whose queue runs each job right away, in this process."""

    def run_now(job_id: str) -> None:
        jobs.run_job(job_id, settings)

    app = create_app(settings, enqueue=run_now)
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.slow
def test_bench_api_agrees_with_the_local_bench(settings: Settings) -> None:
    def bench(runner: Runner) -> Scored:
        runs = run_bench(
            "digits", ["badnet"], {"ss": SS}, n_samples=600, reserve_size=100, runner=runner
        )
        return runs[0]

    local = bench(local_runner("cpu"))
    with in_process_app(settings) as http:
        remote = bench(ApiRunner("http://testserver", http=http))

    assert remote.record.metrics == local.record.metrics
    np.testing.assert_allclose(remote.scores, local.scores, rtol=1e-6)
    # The planted set is not all flagged: NaN -> True read every row as flagged.
    assert 0.0 <= local.record.metrics["fpr"] < 0.5


def test_cli_and_service_csv_exports_read_the_same(tmp_path: Path) -> None:
    scores = np.array([0.5, 2.0, -1.0, 0.25])
    flags = np.array([False, True, False, False])
    path = tmp_path / "scores.csv"

    write_scores(path, DetectionResult(scores=scores, flags=flags))
    table = pacsv.read_csv(path)
    read = read_table(path.read_bytes(), "csv")

    assert table.column_names == ["sample_index", "score", "flagged", "rank", "source"]
    assert str(table["flagged"].type) == "bool"
    assert b"true" in path.read_bytes() and b"false" in path.read_bytes()
    np.testing.assert_array_equal(read["flagged"].to_numpy(zero_copy_only=False), flags)
    np.testing.assert_allclose(read["score"].to_numpy(), scores)
    with pytest.raises(ValueError, match="true/false"):
        read_table(b"sample_index,score,flagged,rank\n0,1.0,1,1\n", "csv")
