"""Attacks × detectors benchmarks (application code: it plots and talks HTTP).

- :mod:`poisonscan.bench.grid` — plant, detect, evaluate, tabulate, records;
- :mod:`poisonscan.bench.retrain` — victims retrained on what a detector kept (ACC/ASR);
- :mod:`poisonscan.bench.plots` — score histograms, ROC curves, AUROC heat map (matplotlib);
- :mod:`poisonscan.bench.api` — a runner that goes through a poisonscan API.
"""

from poisonscan.bench.grid import (
    BenchCase,
    BenchRecord,
    Runner,
    Scored,
    append_record,
    build_cases,
    local_runner,
    markdown_table,
    poison_case,
    read_records,
    run_bench,
    run_case,
    victim_retrainer,
    write_records,
)

__all__ = [
    "BenchCase",
    "BenchRecord",
    "Runner",
    "Scored",
    "append_record",
    "build_cases",
    "local_runner",
    "markdown_table",
    "poison_case",
    "read_records",
    "run_bench",
    "run_case",
    "victim_retrainer",
    "write_records",
]
