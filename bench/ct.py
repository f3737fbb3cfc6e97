"""Benchmark Confusion Training (Qi et al., USENIX Security 2023) presets.

Quality mode: for every attack x preset, plant the attack (seeded) in a real
offline dataset, hold out a class-stratified clean reserve (or let CT draw one
with ``--reserve 0``), run ``ct`` and print a Markdown table of the median over
seeds: recall (TPR), FPR, AUROC, wall time, peak RSS and, on CUDA, peak GPU
memory::

    python bench/ct.py --dataset digits --attacks badnet,blend --presets fast --seeds 0,1,2

Timing mode (``--timing-only``): random CIFAR-shaped data (50,000 x 32x32x3
uint8, 10 classes, a 2,000-sample reserve), one run per preset; prints the
seconds of the base model, of every round and the total. Synthetic data is for
timing only, never for quality claims.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from detection.attacks import plant
from detection.datasets import load_source, split_reserve
from detection.defenses.ct import detect
from detection.defenses.ct_params import CTParams
from detection.metrics import evaluate
from detection.types import DetectionInput, RunContext


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_gpu(device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gpu_mb(device: str) -> float | None:
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def run_case(
    dataset: str,
    n_samples: int | None,
    attack: str,
    rate: float,
    preset: str,
    seed: int,
    n_reserve: int,
    device: str,
) -> dict[str, Any]:
    """Plant, detect and evaluate once; return metrics, time and memory."""
    data = load_source(dataset, n_samples=n_samples, seed=seed)
    inspected, held = split_reserve(data.labels, n_reserve, seed) if n_reserve else (None, None)
    x, labels = (
        (data.x, data.labels)
        if inspected is None
        else (
            data.x[inspected],
            data.labels[inspected],
        )
    )
    ps = plant(attack, x, labels, data.n_classes, {"rate": rate, "target_class": 0}, seed=seed)
    clean_x = None if held is None else data.x[held]
    clean_y = None if held is None else data.labels[held]
    inp = DetectionInput(ps.x, ps.labels, data.n_classes, clean_x, clean_y)
    _reset_gpu(device)
    start = time.perf_counter()
    res = detect(inp, CTParams(preset=preset, device=device), RunContext(device=device, seed=seed))
    seconds = time.perf_counter() - start
    metrics = evaluate(res.scores, res.flags, ps.poison_indices, ps.cover_indices)
    return {
        **metrics,
        "seconds": seconds,
        "rss_mb": peak_rss_mb(),
        "gpu_mb": _peak_gpu_mb(device),
        "targets": res.target_classes,
    }


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return float(statistics.median(values)) if values else None


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def quality_table(args: argparse.Namespace) -> str:
    lines = [
        f"dataset `{args.dataset}`, rate {args.rate}, reserve "
        f"{args.reserve or 'drawn'}, seeds {args.seeds}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}",
        "",
        "| attack | preset | recall (TPR) | FPR | AUROC | time (s) | peak RSS (MB) | "
        "peak GPU (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for attack in args.attacks:
        for preset in args.presets:
            rows = [
                run_case(
                    args.dataset,
                    args.n_samples,
                    attack,
                    args.rate,
                    preset,
                    seed,
                    args.reserve,
                    args.device,
                )
                for seed in args.seeds
            ]
            lines.append(
                f"| {attack} | {preset} | {_fmt(_median(rows, 'tpr'), 3)} | "
                f"{_fmt(_median(rows, 'fpr'), 4)} | {_fmt(_median(rows, 'auroc'), 4)} | "
                f"{_fmt(_median(rows, 'seconds'), 1)} | {_fmt(_median(rows, 'rss_mb'), 0)} | "
                f"{_fmt(_median(rows, 'gpu_mb'), 0)} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def timing_table(args: argparse.Namespace) -> str:
    rng = np.random.default_rng(0)
    n = args.timing_n
    x = rng.integers(0, 256, size=(n + 2000, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=n + 2000).astype(np.int64)
    inp = DetectionInput(x[:n], y[:n], 10, x[n:], y[n:])
    columns = ["preset", "base (s)", *(f"round {r} (s)" for r in range(6))]
    columns += ["identify (s)", "total (s)", "peak RSS (MB)", "peak GPU (MB)"]
    lines = [
        f"synthetic {n} x 32x32x3, reserve 2000, device {args.device}",
        "",
        "| " + " | ".join(columns) + " |",
        "|---" * len(columns) + "|",
    ]
    for preset in args.presets:
        _reset_gpu(args.device)
        res = detect(inp, CTParams(preset=preset, device=args.device), RunContext(args.device))
        t = res.info["timings"]
        rounds = [
            sum(t.get(f"round_{r}_{s}", 0.0) for s in ("pretrain", "confusion", "distill"))
            for r in range(6)
        ]
        cells = [t.get("base_model", 0.0), *rounds, t.get("identify", 0.0), t["total"]]
        lines.append(
            f"| {preset} | "
            + " | ".join(f"{c:.1f}" for c in cells)
            + f" | {peak_rss_mb():.0f} | {_fmt(_peak_gpu_mb(args.device), 0)} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="digits", help="digits, fashion-mnist, ...")
    p.add_argument("--n-samples", type=int, default=None, help="stratified subset size")
    p.add_argument("--attacks", type=_csv, default=["badnet", "blend"])
    p.add_argument("--rate", type=float, default=0.03, help="poison rate")
    p.add_argument("--presets", type=_csv, default=["fast"])
    p.add_argument("--seeds", type=lambda s: [int(v) for v in _csv(s)], default=[0])
    p.add_argument("--reserve", type=int, default=200, help="held-out reserve; 0 = drawn")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--timing-only", action="store_true", help="synthetic CIFAR-shaped timing")
    p.add_argument("--timing-n", type=int, default=50_000)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = timing_table(args) if args.timing_only else quality_table(args)
    print()
    print(table)


if __name__ == "__main__":
    main()
