"""The `poisonscan` CLI: parameter parsing, user errors, and a real scan end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from detection.attacks import plant
from detection.datasets import load_source
from detection.readers import write_npz
from poisonscan.cli import main
from poisonscan.cli.params import parse_param_pairs


def test_param_pairs_nest_and_parse_json() -> None:
    parsed = parse_param_pairs(["budget=0.1", "base_model.epochs=3", "arch=small_cnn", "r=[1,2]"])
    assert parsed == {"budget": 0.1, "base_model": {"epochs": 3}, "arch": "small_cnn", "r": [1, 2]}


def test_param_pair_without_equals_is_rejected() -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_param_pairs(["budget"])


def test_unknown_method_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(tmp_path / "missing.npz"), "--method", "nope"]) == 2
    assert "unknown detector 'nope'" in capsys.readouterr().err


def test_bad_params_are_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tmp_path / "x.npz"), "-m", "ss", "-p", "budget=7"]) == 2
    assert "budget" in capsys.readouterr().err


def test_params_that_need_a_reserve_fail_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "not-read.npz")
    assert main(["scan", missing, "-m", "ss", "-p", "threshold=clean_fpr"]) == 2
    assert "need a clean reserve" in capsys.readouterr().err


def test_corrupt_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["scan", str(bad), "-m", "ss", "-q"]) == 2
    assert "poisonscan: error" in capsys.readouterr().err


def test_methods_lists_registered_detectors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("ct", "ss", "ac"):
        assert name in out


def test_scan_writes_scores_and_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load_source("digits")
    poisoned = plant("badnet", data.x, data.labels, 10, {"rate": 0.06, "target_class": 0}, seed=1)
    write_npz(tmp_path / "d.npz", poisoned.x, poisoned.labels)
    truth = {"poison_indices": poisoned.poison_indices.tolist(), "cover_indices": []}
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    out = tmp_path / "scores.parquet"
    args = ["scan", str(tmp_path / "d.npz"), "-m", "ss", "-p", "base_model.epochs=6", "-q"]
    code = main([*args, "--truth", str(tmp_path / "truth.json"), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| n_samples |" in printed and "flagged" in printed
    table = pq.read_table(out).to_pydict()
    assert len(table["score"]) == data.n_samples
    assert sorted(table["rank"]) == list(range(1, data.n_samples + 1))
    scores = np.asarray(table["score"])
    poison_mean = scores[poisoned.poison_indices].mean()
    assert poison_mean > np.median(scores)
