"""``poisonscan scan`` and ``poisonscan methods``: detectors on local files.

These run locally with no database, broker or web server. Parameters go
through the same registry params model as the API's ``params`` body.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detection.metrics import evaluate, rank_by_score
from detection.readers import read_dataset
from detection.registry import (
    DETECTORS,
    parse_detector_params,
    requires_clean_reserve,
    run_detector,
)
from detection.types import DetectionInput, DetectionResult, RunContext
from poisonscan.cli.params import parse_param_pairs


def collect_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = json.loads(args.params_json) if args.params_json else {}
    params.update(parse_param_pairs(args.param or []))
    if args.preset:
        params["preset"] = args.preset
    if args.device:
        params["device"] = args.device
    return params


def load_truth(path: Path | None) -> tuple[NDArray[np.int64] | None, NDArray[np.int64] | None]:
    """Read ground truth JSON (``poison_indices``, ``cover_indices``) from ``poisonscan poison``."""
    if path is None:
        return None, None
    raw = json.loads(path.read_text())
    poison = np.asarray(raw.get("poison_indices", []), dtype=np.int64)
    cover = np.asarray(raw.get("cover_indices", []), dtype=np.int64)
    return poison, cover


def build_input(args: argparse.Namespace) -> tuple[DetectionInput, list[str] | None]:
    """The detector's input and the samples' sources (archive paths; None for rows)."""
    data = read_dataset(Path(args.data))
    n_classes = data.n_classes
    clean_x = clean_y = None
    if args.clean:
        clean = read_dataset(Path(args.clean))
        n_classes = max(n_classes, clean.n_classes)
        clean_x, clean_y = clean.x, clean.labels
    return DetectionInput(data.x, data.labels, n_classes, clean_x, clean_y), data.sources


class ProgressBar:
    """A tqdm bar driven by ``RunContext.progress``."""

    def __init__(self, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, disable=not enabled, unit="‰", dynamic_ncols=True)

    def __call__(self, stage: str, fraction: float) -> None:
        self.bar.set_description(stage[:40])
        self.bar.update(max(0, round(fraction * 1000) - self.bar.n))

    def close(self) -> None:
        self.bar.close()


def write_scores(path: Path, result: DetectionResult, sources: list[str] | None = None) -> None:
    """Write sample_index, score, flagged, rank, source as .csv, .parquet or .npz.

    CSV and Parquet are the service's exports, column for column (``flagged`` is
    ``true``/``false`` in CSV; ``source`` the archive path, or the row index).
    """
    n = result.scores.size
    columns = {
        "sample_index": np.arange(result.scores.size, dtype=np.int64),
        "score": np.asarray(result.scores, dtype=np.float64),
        "flagged": np.asarray(result.flags, dtype=bool),
        "rank": rank_by_score(result.scores).astype(np.int64),
        "source": np.asarray(sources if sources is not None else [str(i) for i in range(n)]),
    }
    suffix = path.suffix.lower()
    if suffix == ".npz":
        np.savez(path, **columns)  # type: ignore[arg-type]
    elif suffix in (".parquet", ".csv"):
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        table = pa.table(columns)
        if suffix == ".csv":
            pacsv.write_csv(table, path)
        else:
            pq.write_table(table, path)
    else:
        raise ValueError(f"--out must end in .csv, .parquet or .npz, got {path.name}")


def format_metrics(metrics: dict[str, float | int]) -> str:
    keys = ["n_samples", "n_poison", "n_flagged", "tpr", "fpr", "auroc", "ap", "tpr_at_fpr_1"]
    head = "| " + " | ".join(keys) + " |"
    rule = "|" + "---|" * len(keys)
    cells = [
        f"{metrics[k]:.4f}" if isinstance(metrics[k], float) else str(metrics[k]) for k in keys
    ]
    return "\n".join([head, rule, "| " + " | ".join(cells) + " |"])


def cmd_scan(args: argparse.Namespace) -> int:
    params = collect_params(args)
    parsed = parse_detector_params(args.method, params)  # fail fast, before reading data
    if not args.clean and requires_clean_reserve(parsed):
        raise ValueError(f"these params of method {args.method!r} need a clean reserve: --clean")
    inp, sources = build_input(args)
    bar = ProgressBar(not args.quiet)
    ctx = RunContext(seed=args.seed, progress=bar)
    start = time.perf_counter()
    try:
        result = run_detector(args.method, inp, params, ctx)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    print(f"{args.method}: flagged {result.n_flagged} of {inp.n_samples} in {elapsed:.1f}s")
    if result.target_classes:
        print(f"suspected target classes: {result.target_classes}")
    poison, cover = load_truth(Path(args.truth) if args.truth else None)
    if poison is not None:
        print(format_metrics(evaluate(result.scores, result.flags, poison, cover)))
    if args.out:
        write_scores(Path(args.out), result, sources)
        print(f"scores written to {args.out}")
    if args.summary:
        Path(args.summary).write_text(json.dumps(result.summary(), indent=2, default=float))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    for name in DETECTORS.names():
        entry = DETECTORS.get(name)
        print(f"{name:12s} {entry.description}")
        if args.verbose:
            print(json.dumps(entry.params_schema(), indent=2))
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("scan", help="run a detector on a local dataset file")
    p.add_argument("data", help="dataset file: .npz, ImageFolder .zip/.tar, .parquet or .csv")
    p.add_argument("--method", "-m", default="ct", help="detector name (see `poisonscan methods`)")
    p.add_argument("--clean", help="trusted clean reserve, same format and classes")
    p.add_argument("--preset", help="shortcut for --param preset=NAME (ct)")
    p.add_argument("--param", "-p", action="append", help="params field: key=value (JSON value)")
    p.add_argument("--params-json", help="params as one JSON object")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="torch device (default: cuda when available)")
    p.add_argument("--truth", help="ground-truth JSON from `poisonscan poison`, for metrics")
    p.add_argument("--out", help="write per-sample scores (.csv, .parquet, .npz)")
    p.add_argument("--summary", help="write the result summary as JSON")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_scan)
    m = sub.add_parser("methods", help="list detectors and their params")
    m.add_argument("--verbose", "-v", action="store_true", help="print params JSON schemas")
    m.set_defaults(func=cmd_methods)
