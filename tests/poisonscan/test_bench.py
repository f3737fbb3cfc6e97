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
