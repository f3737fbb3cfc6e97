"""Attacks × detectors benchmark: poison, detect, evaluate, tabulate, plot.

Each run plants one attack (seeded) in a named offline dataset, runs one
detector — locally through the registry, or through a running poisonscan API
— and records metrics against the planted poison (covers count as clean).
Results: a Markdown table (median over seeds) and one JSON record per run;
:mod:`poisonscan.bench.plots` draws the PNG plots.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from detection.attacks import ATTACKS, PoisonedSet, plant
from detection.base_model import Arch
from detection.cache import ModelCache
from detection.datasets import load_source, split_reserve
from detection.metrics import evaluate
from detection.readers import LoadedDataset
from detection.registry import run_detector
from detection.types import DetectionInput, RunContext
from detection.version import code_version
from detection.victim import victim_params
from poisonscan.bench.retrain import (
    NO_DEFENSE,
    Retrainer,
    held_out_test,
    poisoned_digest,
    victim_dict,
)

TABLE_METRICS = ("tpr", "fpr", "auroc", "tpr_at_fpr_1", "ap")
VICTIM_METRICS = ("accuracy", "asr")
log = logging.getLogger(__name__)


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
    victim: dict[str, float | int] | None = None

    @property
    def cell(self) -> tuple[str, str, int]:
        return (self.attack, self.detector, self.seed)


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
    retrainer: Retrainer | None = None,
    on_record: Callable[[BenchRecord], None] | None = None,
    no_defense_asr: float | None = None,
) -> list[Scored]:
    """Every detector on one poisoned set; ``none`` (:data:`NO_DEFENSE`) flags nothing.

    With ``retrainer`` each record also gets the ACC/ASR of a victim trained on
    the samples its detector did not flag; ``no_defense_asr`` is the ASR of a
    ``none`` row recorded earlier (a resumed run), for ``retrainer.min_asr``.

    ``on_record`` sees each record as soon as it is made, so a caller can append
    it to a file and a crashed or cut run keeps its finished cells.
    """
    inp, poisoned = poison_case(data, case, reserve_size)
    mask = np.zeros(inp.n_samples, dtype=bool)
    mask[poisoned.poison_indices] = True
    if retrainer is not None and no_defense_asr is not None:
        retrainer.no_defense_asr[poisoned_digest(poisoned)] = no_defense_asr
    out = []
    for detector, params in detectors.items():
        start = time.perf_counter()
        try:
            scores, flags = _detect(runner, inp, detector, params, case.seed)
        except Exception:  # one failing cell must not end a long grid
            log.exception("%s on %s (seed %d) failed", detector, case.attack, case.seed)
            continue
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
        if retrainer is not None:
            record.victim = _retrain(retrainer, poisoned, flags, case.seed)
        if on_record:
            on_record(record)
        out.append(Scored(record, scores, mask))
    return out


def _detect(
    runner: Runner, inp: DetectionInput, detector: str, params: Mapping[str, Any], seed: int
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    if detector == NO_DEFENSE:  # no defense: nothing flagged, every score equal
        return np.zeros(inp.n_samples), np.zeros(inp.n_samples, dtype=bool)
    return runner(inp, detector, params, seed)


def _retrain(
    retrainer: Retrainer, poisoned: PoisonedSet, flags: NDArray[np.bool_], seed: int
) -> dict[str, float | int] | None:
    before = retrainer.trained
    start = time.perf_counter()
    report = retrainer.report(poisoned, ~np.asarray(flags, dtype=bool), seed)
    if report is None:
        return None
    out = victim_dict(report)
    out["seconds"] = round(time.perf_counter() - start, 3)
    out["cached"] = int(retrainer.trained == before)
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
    retrainer: Callable[[str, LoadedDataset], tuple[LoadedDataset, Retrainer]] | None = None,
    done: Sequence[BenchRecord] = (),
) -> list[Scored]:
    """Run the attacks × rates × seeds × detectors grid on one dataset.

    ``retrainer(dataset, data)`` (see :func:`victim_retrainer`) returns the
    training pool and a :class:`Retrainer`: every cell then gets a victim's
    ACC/ASR after cleansing, plus a ``none`` row per poisoned set. Cells with
    a record in ``done`` (attack, detector, seed) are skipped: resuming an appended JSONL.
    """
    data = load_source(dataset, data_dir=data_dir, n_samples=n_samples)
    victims = None
    if retrainer is not None:
        data, victims = retrainer(dataset, data)
    run = runner or local_runner()
    results: list[Scored] = []
    if victims is not None and NO_DEFENSE not in detectors:
        detectors = {NO_DEFENSE: {}, **detectors}
    cells = {r.cell for r in done}
    asr = {r.cell: r.victim.get("asr") for r in done if r.victim and r.detector == NO_DEFENSE}
    for case in build_cases(dataset, attacks, rates, seeds):
        todo = {n: p for n, p in detectors.items() if (case.attack, n, case.seed) not in cells}
        if todo:
            known = asr.get((case.attack, NO_DEFENSE, case.seed))
            results += run_case(data, case, todo, run, reserve_size, victims, on_record, known)
    return results


def victim_retrainer(
    n_test: int = 2000,
    epochs: float = 10.0,
    augment: bool = False,
    device: str = "auto",
    arch: Arch = "convnet",
    min_asr: float = 0.0,
) -> Callable[[str, LoadedDataset], tuple[LoadedDataset, Retrainer]]:
    """A ``retrainer`` for :func:`run_bench`: victims tested on ``n_test`` clean test images.

    ``augment=False`` by default: with crop + flip a fixed-position patch at
    0.3% does not implant in 10 epochs (docs/benchmarks.md), and a defense is
    only measurable against an attack that implants without it. ``arch``
    ``small_cnn`` is the CPU-sized victim (the grid CNN costs ~5x more per step).
    """

    def make(dataset: str, data: LoadedDataset) -> tuple[LoadedDataset, Retrainer]:
        pool, test_x, test_labels = held_out_test(dataset, data, n_test)
        params = victim_params(epochs).model_copy(update={"augment": augment, "arch": arch})
        return pool, Retrainer(test_x, test_labels, params, device, min_asr)

    return make


def _rate_label(record: BenchRecord) -> str:
    rate = record.n_poison / max(1, record.n_samples)
    return f"{rate:.1%}"


def markdown_table(records: Sequence[BenchRecord]) -> str:
    """attack × rate × detector -> medians over seeds of the metrics and seconds.

    Columns: TPR, FPR, AUROC, TPR@1%FPR, AP, then ACC and ASR of the victim
    retrained on the kept samples when any record has one, then the
    detector's seconds. The ``none`` row (no defense) has only ACC/ASR.
    """
    groups: dict[tuple[str, str, str], list[BenchRecord]] = {}
    for r in records:
        groups.setdefault((r.attack, _rate_label(r), r.detector), []).append(r)
    victims = any(r.victim for r in records)
    names = ["TPR", "FPR", "AUROC", "TPR@1%FPR", "AP"] + (["ACC", "ASR"] if victims else [])
    head = "| attack | poison | detector | seeds | " + " | ".join(names) + " | seconds |"
    lines = [head, "|" + "---|" * (len(names) + 5)]
    for (attack, rate, detector), rs in groups.items():
        cells = [_median_cell(rs, k, detector) for k in TABLE_METRICS]
        if victims:
            cells += [_median_victim(rs, k) for k in VICTIM_METRICS]
        secs = "-" if detector == NO_DEFENSE else f"{np.median([r.seconds for r in rs]):.1f}"
        row = f"| {attack} | {rate} | {detector} | {len(rs)} | " + " | ".join(cells)
        lines.append(row + f" | {secs} |")
    return "\n".join(lines)


def _median_cell(rs: Sequence[BenchRecord], key: str, detector: str) -> str:
    values = [float(r.metrics[key]) for r in rs if key in r.metrics]
    if detector == NO_DEFENSE or not values:
        return "-"
    return f"{np.median(values):.3f}"


def _median_victim(rs: Sequence[BenchRecord], key: str) -> str:
    values = [float(r.victim[key]) for r in rs if r.victim and key in r.victim]
    return f"{np.median(values):.3f}" if values else "-"


def record_line(record: BenchRecord) -> str:
    """The JSONL line of one record."""
    return json.dumps(asdict(record), default=float) + "\n"


def write_records(records: Sequence[BenchRecord], path: Path) -> None:
    """One JSON object per line."""
    with path.open("w") as fh:
        fh.writelines(record_line(r) for r in records)


def append_record(record: BenchRecord, path: Path) -> None:
    """Append one record and flush: a cut run keeps every finished cell."""
    with path.open("a") as fh:
        fh.write(record_line(record))


def read_records(path: Path) -> list[BenchRecord]:
    """The records of a JSONL file (blank lines and a torn last line are skipped)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(BenchRecord(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out
