"""Attacks × detectors benchmark: poison, detect, evaluate, tabulate, plot.

Each run plants one attack (seeded) in a named offline dataset, runs one
detector — locally through the registry, or through a running poisonscan API
— and records metrics against the planted poison (covers count as clean).
Results: a Markdown table (median over seeds) and one JSON record per run;
:mod:`poisonscan.bench.plots` draws the PNG plots.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from detection.attacks import ATTACKS, PoisonedSet, plant
from detection.cache import ModelCache
from detection.datasets import load_source, split_reserve
from detection.metrics import evaluate
from detection.readers import LoadedDataset
from detection.registry import run_detector
from detection.types import DetectionInput, RunContext
from detection.version import code_version

TABLE_METRICS = ("tpr", "fpr", "auroc", "ap")


@dataclass
class BenchCase:
    """One cell of the grid: a dataset, an attack with its params, a seed."""

    dataset: str
    attack: str
    attack_params: dict[str, Any]
    seed: int


@dataclass
class BenchRecord:
    """The JSON record of one detector run on one poisoned set."""

    dataset: str
    attack: str
    attack_params: dict[str, Any]
    detector: str
    detector_params: dict[str, Any]
    seed: int
    n_samples: int
    n_poison: int
    n_cover: int
    seconds: float
    metrics: dict[str, float | int]
    code_version: str
    host: str = field(default_factory=platform.node)


@dataclass
class Scored:
    record: BenchRecord
    scores: NDArray[np.float64]
    poison_mask: NDArray[np.bool_]


class Runner(Protocol):
    def __call__(
        self, inp: DetectionInput, detector: str, params: Mapping[str, Any], seed: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]: ...


def local_runner(device: str | None = None) -> Runner:
    """Run detectors in this process through the registry, sharing trained base models."""
    models = ModelCache()

    def run(
        inp: DetectionInput, detector: str, params: Mapping[str, Any], seed: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        ctx = RunContext(device=device or "auto", seed=seed, models=models)
        result = run_detector(detector, inp, params, ctx)
        return result.scores, result.flags

    return run


def poison_case(
    data: LoadedDataset, case: BenchCase, reserve_size: int
) -> tuple[DetectionInput, PoisonedSet]:
    """Split off a clean reserve, plant the attack in the rest."""
    inspect_idx, reserve_idx = split_reserve(data.labels, reserve_size, case.seed)
    poisoned = plant(
        case.attack,
        data.x[inspect_idx],
        data.labels[inspect_idx],
        data.n_classes,
        case.attack_params,
        seed=case.seed,
    )
    inp = DetectionInput(
        poisoned.x,
        poisoned.labels,
        data.n_classes,
        clean_x=data.x[reserve_idx],
        clean_labels=data.labels[reserve_idx],
    )
    return inp, poisoned


def run_case(
    data: LoadedDataset,
    case: BenchCase,
    detectors: Mapping[str, Mapping[str, Any]],
    runner: Runner,
    reserve_size: int,
) -> list[Scored]:
    """Every detector on one poisoned set."""
    inp, poisoned = poison_case(data, case, reserve_size)
    mask = np.zeros(inp.n_samples, dtype=bool)
    mask[poisoned.poison_indices] = True
    out = []
    for detector, params in detectors.items():
        start = time.perf_counter()
        scores, flags = runner(inp, detector, params, case.seed)
        seconds = time.perf_counter() - start
        metrics = evaluate(scores, flags, poisoned.poison_indices, poisoned.cover_indices)
        record = BenchRecord(
            dataset=case.dataset,
            attack=case.attack,
            attack_params=dict(case.attack_params),
            detector=detector,
            detector_params=dict(params),
            seed=case.seed,
            n_samples=inp.n_samples,
            n_poison=int(poisoned.poison_indices.size),
            n_cover=int(poisoned.cover_indices.size),
            seconds=round(seconds, 3),
            metrics=metrics,
            code_version=code_version(),
        )
        out.append(Scored(record, scores, mask))
    return out


def build_cases(
    dataset: str, attacks: Sequence[str], rates: Sequence[float | None], seeds: Sequence[int]
) -> list[BenchCase]:
    cases = []
    for attack in attacks:
        ATTACKS.get(attack)  # unknown names fail before any work
        for rate in rates:
            params: dict[str, Any] = {} if rate is None else {"rate": rate}
            cases += [BenchCase(dataset, attack, params, seed) for seed in seeds]
    return cases


def run_bench(
    dataset: str,
    attacks: Sequence[str],
    detectors: Mapping[str, Mapping[str, Any]],
    *,
    rates: Sequence[float | None] = (None,),
    seeds: Sequence[int] = (0,),
    n_samples: int | None = None,
    reserve_size: int = 200,
    runner: Runner | None = None,
    data_dir: Path | None = None,
    on_record: Callable[[BenchRecord], None] | None = None,
) -> list[Scored]:
    """Run the attacks × rates × seeds × detectors grid on one dataset."""
    data = load_source(dataset, data_dir=data_dir, n_samples=n_samples)
    run = runner or local_runner()
    results: list[Scored] = []
    for case in build_cases(dataset, attacks, rates, seeds):
        for scored in run_case(data, case, detectors, run, reserve_size):
            results.append(scored)
            if on_record:
                on_record(scored.record)
    return results


def _rate_label(record: BenchRecord) -> str:
    rate = record.n_poison / max(1, record.n_samples)
    return f"{rate:.1%}"


def markdown_table(records: Sequence[BenchRecord]) -> str:
    """attack × rate × detector -> median TPR, FPR, AUROC, AP and seconds over seeds."""
    groups: dict[tuple[str, str, str], list[BenchRecord]] = {}
    for r in records:
        groups.setdefault((r.attack, _rate_label(r), r.detector), []).append(r)
    head = "| attack | poison | detector | seeds | TPR | FPR | AUROC | AP | seconds |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for (attack, rate, detector), rs in groups.items():
        cells = [f"{np.median([float(r.metrics[k]) for r in rs]):.3f}" for k in TABLE_METRICS]
        secs = np.median([r.seconds for r in rs])
        row = f"| {attack} | {rate} | {detector} | {len(rs)} | " + " | ".join(cells)
        lines.append(row + f" | {secs:.1f} |")
    return "\n".join(lines)


def write_records(records: Sequence[BenchRecord], path: Path) -> None:
    """One JSON object per line."""
    with path.open("w") as fh:
        for r in records:
            fh.write(json.dumps(asdict(r), default=float) + "\n")
