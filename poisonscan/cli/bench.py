"""``poisonscan poison`` and ``poisonscan bench``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from detection.attacks import plant
from detection.datasets import load_source
from detection.readers import write_npz
from poisonscan.bench import (
    BenchRecord,
    Runner,
    append_record,
    local_runner,
    markdown_table,
    read_records,
    run_bench,
    victim_retrainer,
)
from poisonscan.bench.plots import plot_heatmap, plot_results
from poisonscan.cli.params import parse_param_pairs


def cmd_poison(args: argparse.Namespace) -> int:
    data = load_source(args.dataset, n_samples=args.n_samples, seed=args.seed)
    params = parse_param_pairs(args.param or [])
    if args.rate is not None:
        params["rate"] = args.rate
    poisoned = plant(args.attack, data.x, data.labels, data.n_classes, params, seed=args.seed)
    out = Path(args.out)
    write_npz(out, poisoned.x, poisoned.labels)
    truth = {
        "attack": args.attack,
        "info": poisoned.info,
        "target_class": poisoned.target_class,
        "poison_indices": poisoned.poison_indices.tolist(),
        "cover_indices": poisoned.cover_indices.tolist(),
    }
    truth_path = Path(args.truth) if args.truth else out.with_suffix(".truth.json")
    truth_path.write_text(json.dumps(truth, default=str))
    n_poison, n_cover = poisoned.poison_indices.size, poisoned.cover_indices.size
    print(f"wrote {out} ({poisoned.labels.size} samples, {n_poison} poison, {n_cover} cover)")
    print(f"ground truth: {truth_path}")
    return 0


def parse_detectors(spec: str, extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``ct,ss`` + ``{"ct": {...}}`` -> {name: params}."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    return {name: dict(extra.get(name, {})) for name in names}


def bench_runner(args: argparse.Namespace) -> Runner:
    """In this process, or through the API at ``--api`` (imports httpx only then)."""
    if not args.api:
        return local_runner(args.device)
    from poisonscan.bench.api import ApiRunner

    return ApiRunner(args.api, api_key=getattr(args, "api_key", None))


def show(record: BenchRecord) -> None:
    """One progress line per finished cell."""
    m = record.metrics
    line = (
        f"  {record.attack:16s} {record.detector:9s} seed {record.seed}: "
        f"TPR {m['tpr']:.3f} FPR {m['fpr']:.4f} AUROC {m['auroc']:.3f} "
        f"TPR@1%FPR {m['tpr_at_fpr_1']:.3f} ({record.seconds:.1f}s)"
    )
    if record.victim:
        v = record.victim
        line += f"  ACC {v['accuracy']:.3f} ASR {v['asr']:.3f} (victim {v['seconds']:.1f}s)"
    print(line, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = Path(args.jsonl) if args.jsonl else out / "records.jsonl"
    if args.summarize:
        return summarize(read_records(jsonl), out)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    detector_params = json.loads(args.detector_params) if args.detector_params else {}
    detectors = parse_detectors(args.detectors, detector_params)
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [None]
    seeds = [int(s) for s in args.seeds.split(",")]
    done = read_records(jsonl) if args.jsonl and jsonl.exists() else []
    if not args.jsonl:
        jsonl.write_text("")
    retrainer = None
    if args.retrain:
        retrainer = victim_retrainer(
            args.victim_test,
            args.victim_epochs,
            args.victim_augment,
            args.device or "auto",
            args.victim_arch,
            args.victim_min_asr,
        )

    def record(r: BenchRecord) -> None:
        append_record(r, jsonl)
        show(r)

    results = run_bench(
        args.dataset,
        [a.strip() for a in args.attacks.split(",") if a.strip()],
        detectors,
        rates=rates,
        seeds=seeds,
        n_samples=args.n_samples,
        reserve_size=args.reserve,
        runner=bench_runner(args),
        on_record=record,
        retrainer=retrainer,
        done=done,
    )
    plots = [] if args.no_plots or not results else plot_results(results, out)
    print(f"\nrecords: {jsonl}; plots: {', '.join(p.name for p in plots) or '-'}")
    return summarize(read_records(jsonl), out, heatmap=not args.no_plots)


def summarize(records: list[BenchRecord], out: Path, heatmap: bool = True) -> int:
    """Write ``table.md`` (and ``auroc.png``) for ``records`` into ``out``; print the table."""
    table = markdown_table(records)
    (out / "table.md").write_text(table + "\n")
    print()
    print(table)
    if heatmap and records:
        print(f"heat map: {plot_heatmap(records, out / 'auroc.png')}")
    return 0


def cmd_bench_ct(args: argparse.Namespace) -> int:
    from poisonscan.bench import ct

    ct.main(args.passthrough)
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("poison", help="write a poisoned copy of a dataset + ground truth")
    p.add_argument("--dataset", default="digits", help="digits, fashion-mnist, cifar10:PATH, ...")
    p.add_argument("--attack", default="badnet")
    p.add_argument("--rate", type=float)
    p.add_argument("--param", "-p", action="append", help="attack params field: key=value")
    p.add_argument("--n-samples", type=int, help="class-stratified subset size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="poisoned.npz")
    p.add_argument("--truth", help="ground-truth JSON path (default: OUT.truth.json)")
    p.set_defaults(func=cmd_poison)
    b = sub.add_parser("bench", help="attacks x detectors benchmark")
    b.add_argument("--dataset", default="digits")
    b.add_argument("--attacks", default="badnet,blend")
    b.add_argument("--detectors", default="ct,ss,ac")
    b.add_argument("--detector-params", help='JSON {"ct": {"preset": "fast"}, ...}')
    b.add_argument("--rates", help="comma-separated poison rates (default: each attack's)")
    b.add_argument("--seeds", default="0")
    b.add_argument("--n-samples", type=int, help="class-stratified subset of the dataset")
    b.add_argument("--reserve", type=int, default=200, help="clean reserve size")
    b.add_argument("--device")
    b.add_argument("--api", help="run detectors through a poisonscan API at this URL")
    b.add_argument(
        "--api-key", help="the API key for --api (default: $POISONSCAN_API_KEY when auth is on)"
    )
    b.add_argument("--out", default="bench/out", help="directory for table, records, plots")
    b.add_argument("--no-plots", action="store_true")
    b.add_argument(
        "--jsonl",
        help="append one record per cell here and skip cells already in it (resume); "
        "default: OUT/records.jsonl, rewritten",
    )
    b.add_argument("--summarize", action="store_true", help="only tabulate and plot the JSONL")
    b.add_argument(
        "--retrain",
        action="store_true",
        help="train a victim on each detector's unflagged samples: ACC/ASR, plus a 'none' row",
    )
    b.add_argument("--victim-epochs", type=float, default=10.0)
    b.add_argument("--victim-test", type=int, default=2000, help="clean test images for ACC/ASR")
    b.add_argument("--victim-augment", action="store_true", help="crop + flip the victim")
    b.add_argument(
        "--victim-arch",
        default="convnet",
        choices=["convnet", "small_cnn", "resnet18"],
        help="victim model (small_cnn: the CPU-sized one)",
    )
    b.add_argument(
        "--victim-min-asr",
        type=float,
        default=0.0,
        help="no victims after detectors where the no-defense ASR is below this",
    )
    b.add_argument("--threads", type=int, help="torch CPU threads")
    b.set_defaults(func=cmd_bench)
    c = sub.add_parser(
        "bench-ct",
        help="Confusion Training on real data: recall/FPR/AUROC per run, --trace per round",
        add_help=False,
    )
    c.set_defaults(func=cmd_bench_ct, passthrough_options=True)
