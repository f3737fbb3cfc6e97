"""Bench smoke test: a tiny attacks x detectors grid end to end, table, records and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detection.registry import UnknownNameError
from poisonscan.bench import build_cases, markdown_table, run_bench, write_records
from poisonscan.bench.plots import plot_results
from poisonscan.cli import main


def test_unknown_attack_fails_before_any_work() -> None:
    with pytest.raises(UnknownNameError):
        build_cases("digits", ["nope"], [None], [0])


def test_bench_grid_records_table_and_plots(tmp_path: Path) -> None:
    detectors = {"ss": {"base_model": {"epochs": 6}}}
    results = run_bench("digits", ["badnet"], detectors, rates=[0.06], seeds=[0, 1])
    records = [r.record for r in results]
    assert len(records) == 2
    for record in records:
        assert record.n_poison == round(0.06 * record.n_samples)
        assert 0.0 <= record.metrics["fpr"] <= 1.0
        assert record.metrics["auroc"] > 0.8
    table = markdown_table(records)
    assert "| badnet | 6.0% | ss | 2 |" in table
    write_records(records, tmp_path / "r.jsonl")
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["attack_params"] == {"rate": 0.06}
    plots = plot_results(results, tmp_path)
    assert [p.name for p in plots] == ["badnet.png"]
    assert plots[0].stat().st_size > 1000


def test_poison_command_writes_data_and_truth(tmp_path: Path) -> None:
    out = tmp_path / "p.npz"
    assert main(["poison", "--attack", "blend", "--rate", "0.05", "--out", str(out)]) == 0
    truth = json.loads(out.with_suffix(".truth.json").read_text())
    with np.load(out) as data:
        n = data["y"].shape[0]
    assert len(truth["poison_indices"]) == round(0.05 * n)


def test_bench_ct_summarize_tables_recorded_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from poisonscan.bench.ct import main as bench_ct

    base = {"attack": "blend", "n_poison": 36, "auroc": 0.99, "tpr_at_fpr_1": 0.9, "rss_mb": 9}
    runs = [
        {**base, "seed": s, "reserve": r, "tpr": t, "fpr": f, "seconds": sec, "targets": [3]}
        for s, r, t, f, sec in [
            (0, 1000, 1.0, 0.001, 100),
            (1, 1000, 0.5, 0.02, 300),
            (2, 1000, 0.9, 0.004, 200),
            (0, 0, 0.0, 0.0, 50),
        ]
    ]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    bench_ct(["--summarize", str(path)])
    out = capsys.readouterr().out
    assert out.count("| blend | 36 |") == 4 and "| [3] |" in out
    assert "| blend | 1000 | 3 | 0.900 | 0.500 | 0.0040 | 0.0200 | 0.9900 | 200 |" in out
    assert "| blend | drawn | 1 | 0.000 | 0.000 | 0.0000 | 0.0000 | 0.9900 | 50 |" in out
