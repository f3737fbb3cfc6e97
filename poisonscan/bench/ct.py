"""Benchmark Confusion Training (Qi et al., USENIX Security 2023) on real data.

Quality mode: for every attack x preset x seed x reserve mode, plant the
attack (at its paper rate unless ``--rate``) in a class-stratified subset of
a real offline dataset, give CT a held-out clean reserve (``--reserve 1000``)
or none (``--reserve 0``: CT draws one), run it and print one row per run:
attack success on a victim (``--victim``), recall (TPR), FPR, AUROC, TPR at 1%
FPR, wall time and peak memory; then the medians::

    poisonscan bench-ct --dataset fashion-mnist --n-samples 12000 \\
        --attacks badnet,blend --seeds 0,1,2 --reserves 1000,0 --trace

``--trace`` prints, per round, the poisons the distilled set kept, the leading
likelihood ratio and the time, so a miss can be traced to the round that lost
the poisons. ``--jsonl FILE`` appends one JSON record per run.

Timing mode (``--timing-only``): random CIFAR-shaped data (50,000 x 32x32x3
uint8, 10 classes, a 2,000-sample reserve), one run per preset; prints the
seconds of every round and the total. Synthetic data is for timing only.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from detection.attacks import plant
from detection.attacks.base import PoisonedSet
from detection.datasets import load_source, split_reserve, stratified_subset
from detection.defenses.ct import detect
from detection.defenses.ct_params import CTParams
from detection.metrics import evaluate
from detection.types import DetectionInput, RunContext
from detection.victim import train_and_attack, victim_params


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass(frozen=True)
class Case:
    dataset: str
    n_samples: int
    attack: str
    rate: float | None
    seed: int
    reserve: int
    target: int


@dataclass
class Tracer:
    """Collects CT's ``ct.round`` events and scores them against the ground truth."""

    poison: np.ndarray
    live: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    losses: list[np.ndarray] = field(default_factory=list)

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if event != "ct.round":
            return
        kept = np.asarray(payload["distilled"])
        n = int(payload["n_inspected"])
        keep_mask = np.zeros(self.poison.size, dtype=bool)
        keep_mask[kept[kept < n]] = True
        self.losses.append(np.asarray(payload["losses"]))
        losses = np.asarray(payload["losses"])[:n]
        fit = losses[self.poison].mean() if self.poison.any() else float("nan")
        self.rows.append(
            {
                "round": payload["round"],
                "kept": int(kept.size),
                "poisons_kept": int((keep_mask & self.poison).sum()),
                "poison_loss": float(fit),
                "clean_loss": float(losses[~self.poison].mean()),
                "round_auroc": _loss_auroc(losses, self.poison),
                **{k: payload[k] for k in _TRACE_KEYS},
            }
        )
        if self.live:
            print("  " + trace_table(self.rows[-1:]).splitlines()[-1], flush=True)


def _loss_auroc(losses: np.ndarray, poison: np.ndarray) -> float | None:
    """How well one round's confused model ranks the poisons (low loss first)."""
    if poison.all() or not poison.any():
        return None
    return float(roc_auc_score(poison, -losses))


_TRACE_KEYS = (
    "pretrain_epochs",
    "pretrain_accuracy",
    "confusion_steps",
    "reserve_accuracy",
    "leading_class",
    "leading_ratio",
    "flagged_classes",
    "suspected_count",
    "retried",
    "collapsed",
    "seconds",
)


def attack_params(case: Case) -> dict[str, Any]:
    params: dict[str, Any] = {"target_class": case.target}
    if case.rate is not None:
        params["rate"] = case.rate
    if case.attack == "tact":
        params["source_classes"] = [(case.target + 1) % 10]
    return params


def prepare(case: Case) -> tuple[DetectionInput, PoisonedSet, np.ndarray, np.ndarray]:
    """The poisoned inspected set (and reserve), plus a clean test split for victims."""
    total = case.n_samples + 1000
    data = load_source(case.dataset, n_samples=total, seed=case.seed)
    inspected, held = split_reserve(data.labels, 1000, case.seed)
    ps = plant(
        case.attack,
        data.x[inspected],
        data.labels[inspected],
        data.n_classes,
        attack_params(case),
        seed=case.seed,
    )
    clean_x = clean_y = None
    if case.reserve:
        pick = held[: case.reserve]
        clean_x, clean_y = data.x[pick], data.labels[pick]
    inp = DetectionInput(ps.x, ps.labels, data.n_classes, clean_x, clean_y)
    test = load_source(case.dataset, split="test")
    idx = stratified_subset(test.labels, 2000, case.seed)
    return inp, ps, test.x[idx], test.labels[idx]


def run_case(case: Case, preset: str, args: argparse.Namespace) -> dict[str, Any]:
    """Plant, (victim,) detect and evaluate once; return one record."""
    inp, ps, test_x, test_y = prepare(case)
    record: dict[str, Any] = {**vars(case), "preset": preset, "n_poison": int(ps.is_poison.sum())}
    if args.victim and (case.reserve or not args.victim_given_only):
        ctx = RunContext(device=args.device, seed=case.seed)
        record["victim"] = train_and_attack(
            ps, test_x, test_y, None, victim_params(), ctx
        ).to_dict()
    tracer = Tracer(ps.is_poison, live=args.trace)
    overrides = json.loads(args.params) if args.params else {}
    params = CTParams(preset=preset, device=args.device, **overrides)
    ctx = RunContext(device=args.device, seed=case.seed, trace=tracer)
    start = time.perf_counter()
    res = detect(inp, params, ctx)
    record["seconds"] = round(time.perf_counter() - start, 1)
    record.update(evaluate(res.scores, res.flags, ps.poison_indices, ps.cover_indices))
    record.update(
        rss_mb=round(peak_rss_mb()),
        targets=res.target_classes,
        rounds=tracer.rows,
        calibration=res.info.get("calibration"),
        timings=res.info.get("timings"),
    )
    if args.save_scores:
        _save_scores(Path(args.save_scores), case, res.scores, ps, tracer)
    return record


def _save_scores(
    folder: Path, case: Case, scores: np.ndarray, ps: PoisonedSet, tracer: Tracer
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{case.attack}_s{case.seed}_r{case.reserve}.npz"
    arrays: dict[str, np.ndarray] = {f"losses_{i}": v for i, v in enumerate(tracer.losses)}
    covers = np.zeros(ps.n_samples, dtype=bool)
    covers[ps.cover_indices] = True
    arrays |= {"scores": scores, "poison": ps.is_poison, "cover": covers, "labels": ps.labels}
    np.savez_compressed(folder / name, allow_pickle=False, **arrays)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_row(r: dict[str, Any]) -> str:
    asr = r.get("victim", {}).get("asr")
    return (
        f"| {r['attack']} | {r['n_poison']} | {r['seed']} | {r['reserve'] or 'drawn'} | "
        f"{_fmt(asr, 3)} | {r['tpr']:.3f} | {r['fpr']:.4f} | {r['auroc']:.4f} | "
        f"{r['tpr_at_fpr_1']:.3f} | {r['seconds']:.0f} | {r['rss_mb']} |"
    )


RUN_HEADER = (
    "| attack | poisons | seed | reserve | victim ASR | recall | FPR | AUROC | TPR@1%FPR | "
    "seconds | peak RSS (MB) |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def trace_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| round | kept | poisons kept | poison loss | clean loss | round AUROC | "
        "pretrain epochs (acc) | confusion steps (reserve acc) | leading class (ratio) | "
        "flagged | suspected | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in rows:
        note = " retried" if t["retried"] else ""
        note += " COLLAPSED" if t["collapsed"] else ""
        lines.append(
            f"| {t['round']} | {t['kept']} | {t['poisons_kept']} | {t['poison_loss']:.3f} | "
            f"{t['clean_loss']:.3f} | {_fmt(t.get('round_auroc'), 3)} | "
            f"{t['pretrain_epochs']} ({t['pretrain_accuracy']}) | "
            f"{t['confusion_steps']} ({t['reserve_accuracy']}){note} | "
            f"{t['leading_class']} ({t['leading_ratio']:.3g}) | "
            f"{t.get('flagged_classes', '-')} | {t['suspected_count']} | "
            f"{t['seconds']:.0f} |"
        )
    return "\n".join(lines)


def summary_table(records: list[dict[str, Any]]) -> str:
    """Medians per attack and reserve mode, and the worst recall/FPR."""
    lines = [
        "| attack | reserve | runs | median recall | min recall | median FPR | max FPR | "
        "median AUROC | median seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["attack"], r["reserve"]) for r in records}, key=str)
    for attack, reserve in keys:
        rs = [r for r in records if r["attack"] == attack and r["reserve"] == reserve]

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(statistics.median(r[key] for r in rs))

        lines.append(
            f"| {attack} | {reserve or 'drawn'} | {len(rs)} | {med('tpr'):.3f} | "
            f"{min(r['tpr'] for r in rs):.3f} | {med('fpr'):.4f} | "
            f"{max(r['fpr'] for r in rs):.4f} | {med('auroc'):.4f} | {med('seconds'):.0f} |"
        )
    return "\n".join(lines)


def quality(args: argparse.Namespace) -> None:
    records = []
    print(
        f"dataset {args.dataset} n={args.n_samples} device {args.device} "
        f"torch threads {torch.get_num_threads()}\n\n{RUN_HEADER}",
        flush=True,
    )
    for attack in args.attacks:
        for reserve in args.reserves:
            for seed in args.seeds:
                case = Case(
                    args.dataset,
                    args.n_samples,
                    attack,
                    args.rate,
                    seed,
                    reserve,
                    target=args.target if args.target is not None else (3 * seed) % 10,
                )
                for preset in args.presets:
                    rec = run_case(case, preset, args)
                    records.append(rec)
                    print(run_row(rec), flush=True)
                    if args.trace:
                        print("\n" + trace_table(rec["rounds"]) + "\n", flush=True)
                    if args.jsonl:
                        with open(args.jsonl, "a") as fh:
                            fh.write(json.dumps(rec, default=_json_default) + "\n")
    print("\n" + summary_table(records))


def summarize(paths: list[str]) -> None:
    """Tables from recorded runs (``--jsonl`` files): one row per run, then the medians."""
    records = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines()]
    records.sort(key=lambda r: (r["attack"], r["reserve"] == 0, r["seed"]))
    rows = [run_row(r) + f" {r['targets']} |" for r in records]
    print(RUN_HEADER.replace("|\n|---", "| flagged classes |\n|---|---", 1))
    print("\n".join(rows) + "\n\n" + summary_table(records))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value)}")


def timing(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    n = args.timing_n
    x = rng.integers(0, 256, size=(n + 2000, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=n + 2000).astype(np.int64)
    inp = DetectionInput(x[:n], y[:n], 10, x[n:], y[n:])
    for preset in args.presets:
        res = detect(inp, CTParams(preset=preset, device=args.device), RunContext(args.device))
        print(preset, json.dumps(res.info["timings"]), flush=True)


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="poisonscan bench-ct",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--n-samples", type=int, default=12000, help="inspected-set size")
    p.add_argument("--attacks", type=_csv, default=["badnet", "blend"])
    p.add_argument("--rate", type=float, default=None, help="poison rate (default: the paper's)")
    p.add_argument("--target", type=int, default=None, help="target class (default 3*seed mod 10)")
    p.add_argument("--presets", type=_csv, default=["fast"])
    p.add_argument("--params", default=None, help="JSON overrides of CT params")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in _csv(s)], default=[0])
    p.add_argument(
        "--reserves",
        type=lambda s: [int(v) for v in _csv(s)],
        default=[1000],
        help="given clean reserve sizes; 0 = CT draws one",
    )
    p.add_argument("--victim", action="store_true", help="train a victim: attack success")
    p.add_argument(
        "--victim-given-only",
        action="store_true",
        help="victim only for runs with a given reserve (the drawn runs plant the same set)",
    )
    p.add_argument("--trace", action="store_true", help="per-round table for every run")
    p.add_argument("--jsonl", default=None, help="append one JSON record per run")
    p.add_argument("--save-scores", default=None, help="folder for per-run score arrays")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--timing-only", action="store_true", help="synthetic CIFAR-shaped timing")
    p.add_argument("--timing-n", type=int, default=50_000)
    p.add_argument(
        "--summarize",
        type=_csv,
        default=None,
        metavar="JSONL[,JSONL]",
        help="print the tables of runs recorded with --jsonl, and run nothing",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.summarize:
        summarize(args.summarize)
    else:
        timing(args) if args.timing_only else quality(args)


if __name__ == "__main__":
    main()
