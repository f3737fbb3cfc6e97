"""`poisonscan bench --retrain`: victims on what a detector kept, `none` rows, the heat map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from detection.datasets import load_source
from detection.types import DetectionInput
from poisonscan.bench import (
    BenchCase,
    BenchRecord,
    poison_case,
    read_records,
    run_case,
    victim_retrainer,
)
from poisonscan.bench.plots import metric_matrix, plot_heatmap
from poisonscan.bench.retrain import NO_DEFENSE, keep_digest
from poisonscan.cli import main


def test_retraining_after_a_perfect_detector_removes_the_backdoor() -> None:
    torch.set_num_threads(1)
    data = load_source("digits")
    pool, retrainer = victim_retrainer(n_test=400, epochs=8, arch="small_cnn")("digits", data)
    assert pool.n_samples == data.n_samples - 359  # a fifth held out: digits has no test split
    case = BenchCase("digits", "badnet", {"rate": 0.05}, 0)
    _, poisoned = poison_case(pool, case, 200)

    def perfect(
        inp: DetectionInput, detector: str, params: object, seed: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        return poisoned.is_poison.astype(np.float64), poisoned.is_poison.copy()

    detectors = {NO_DEFENSE: {}, "perfect": {}, "again": {}}
    out = {
        s.record.detector: s.record
        for s in run_case(pool, case, detectors, perfect, 200, retrainer)
    }
    none, clean = out[NO_DEFENSE].victim, out["perfect"].victim
    assert none is not None and clean is not None
    assert none["asr"] > 0.5, none  # the backdoor implants without a defense
    assert clean["asr"] < none["asr"] - 0.4 and clean["asr"] < 0.2, clean
    assert clean["accuracy"] > 0.85 and none["accuracy"] > 0.85
    assert clean["n_train"] == pool.n_samples - 200 - poisoned.poison_indices.size
    assert out["perfect"].metrics["tpr"] == 1.0 and out["perfect"].metrics["fpr"] == 0.0
    again = out["again"].victim
    assert again is not None and clean["cached"] == 0 and again["cached"] == 1
    assert (again["asr"], again["accuracy"]) == (clean["asr"], clean["accuracy"])
    assert retrainer.trained == 2  # the same kept set twice: one victim
    retrainer.min_asr = 1.0  # an attack that did not implant: no victims after detectors
    (skipped,) = run_case(pool, case, {"perfect": {}}, perfect, 200, retrainer)
    assert skipped.record.victim is None and skipped.record.metrics["tpr"] == 1.0


def test_keep_digest_depends_on_the_kept_rows_only() -> None:
    a = np.array([True, False, True])
    assert keep_digest(a) == keep_digest(a.copy())
    assert keep_digest(a) != keep_digest(np.array([True, True, False]))
    assert keep_digest(a) != keep_digest(np.array([True, False, True, False]))


@pytest.mark.slow
def test_bench_retrain_cli_prints_and_records_acc_asr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl = tmp_path / "grid.jsonl"
    argv = [
        "bench",
        "--dataset",
        "digits",
        "--attacks",
        "badnet",
        "--rates",
        "0.05",
        "--detectors",
        "ac",
        "--detector-params",
        '{"ac": {"base_model": {"epochs": 4}}}',
        "--retrain",
        "--victim-epochs",
        "2",
        "--victim-arch",
        "small_cnn",
        "--threads",
        "1",
        "--jsonl",
        str(jsonl),
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    head = "| attack | poison | detector | seeds | TPR | FPR | AUROC | TPR@1%FPR | AP | ACC | ASR |"
    assert head in out
    assert "| badnet | 5.0% | none | 1 | - | - | - | - | - |" in out
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["detector"] for r in rows] == [NO_DEFENSE, "ac"]
    for r in rows:
        assert set(r["victim"]) >= {"accuracy", "asr", "n_train", "seconds", "cached"}
        assert "tpr_at_fpr_1" in r["metrics"]
    assert rows[1]["victim"]["n_train"] < rows[0]["victim"]["n_train"]
    assert (tmp_path / "auroc.png").stat().st_size > 1000
    assert main(argv) == 0  # resumed: every cell is in the JSONL, nothing reruns
    assert len(jsonl.read_text().splitlines()) == 2


def _record(attack: str, detector: str, seed: int, auroc: float) -> BenchRecord:
    return BenchRecord(
        "fashion-mnist",
        attack,
        {},
        detector,
        {},
        seed,
        100,
        3,
        0,
        1.0,
        {"tpr": 1.0, "fpr": 0.0, "auroc": auroc, "tpr_at_fpr_1": 1.0, "ap": 1.0},
        "test",
    )


def test_heatmap_from_a_small_jsonl(tmp_path: Path) -> None:
    cells = [
        ("badnet", "ss", 0, 0.9),
        ("badnet", "ac", 0, 0.5),
        ("blend", "ss", 0, 0.2),
        ("blend", "ss", 1, 0.4),
        ("blend", "ss", 2, 0.9),
        ("blend", NO_DEFENSE, 0, 0.5),
    ]
    path = tmp_path / "grid.jsonl"
    path.write_text("".join(json.dumps(_record(*c).__dict__) + "\n" for c in cells) + '{"torn')
    records = read_records(path)
    assert len(records) == 6  # the torn last line of a cut run is skipped
    attacks, detectors, values = metric_matrix(records)
    assert (attacks, detectors) == (["badnet", "blend"], ["ss", "ac"])
    np.testing.assert_allclose(values, [[0.9, 0.5], [0.4, np.nan]])  # median of 3 seeds
    png = plot_heatmap(records, tmp_path / "auroc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    with pytest.raises(ValueError, match="no records"):
        plot_heatmap([r for r in records if r.detector == NO_DEFENSE], tmp_path / "x.png")
