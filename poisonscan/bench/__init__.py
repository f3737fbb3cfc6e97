"""Attacks × detectors benchmarks (application code: it plots and talks HTTP).

- :mod:`poisonscan.bench.grid` — plant, detect, evaluate, tabulate, records;
- :mod:`poisonscan.bench.plots` — score histograms and ROC curves (matplotlib);
- :mod:`poisonscan.bench.api` — a runner that goes through a poisonscan API.
"""

from poisonscan.bench.grid import (
    BenchCase,
    BenchRecord,
    Runner,
    Scored,
    build_cases,
    local_runner,
    markdown_table,
    poison_case,
    run_bench,
    run_case,
    write_records,
)

__all__ = [
    "BenchCase",
    "BenchRecord",
    "Runner",
    "Scored",
    "build_cases",
    "local_runner",
    "markdown_table",
    "poison_case",
    "run_bench",
    "run_case",
    "write_records",
]
