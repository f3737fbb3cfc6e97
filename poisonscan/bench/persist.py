"""Score-persistence benchmark: how long one job's N score rows take to store.

    python -m poisonscan.bench.persist --database-url postgresql+psycopg://postgres@127.0.0.1/db \\
        --rows 1000000 --repeat 3

Runs what the worker runs at the end of a job (``repository.replace_scores``
in one transaction: delete the job's rows, then COPY on PostgreSQL or
executemany on SQLite, then commit) on a database migrated to head, and
prints one Markdown row per repeat: rows, seconds, rows/s, and the rows
counted back. The first repeat inserts; later ones replace (a retried job).
The bench dataset and job are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import numpy as np

from service import repository as repo
from service.db import get_sessionmaker, normalise_url, session_scope
from service.migrate import upgrade_head


def _setup(url: str, n_rows: int) -> tuple[str, str]:
    with session_scope(get_sessionmaker(url)) as session:
        stamp = f"{time.time_ns():x}"
        dataset = repo.create_dataset(
            session,
            name="bench-persist",
            format="npz",
            sha256=stamp.rjust(64, "0"),
            size_bytes=0,
            n_samples=n_rows,
            sample_shape=[1],
            n_classes=2,
            class_counts=[n_rows, 0],
            class_names=None,
            storage_uri="bench://none",
            source_uri=None,
        )
        job = repo.create_job(
            session, dataset_id=dataset.id, method="ss", params={}, seed=0, code_version="bench"
        )
        return dataset.id, job.id


def _teardown(url: str, dataset_id: str, job_id: str) -> None:
    with session_scope(get_sessionmaker(url)) as session:
        job = repo.get_job(session, job_id)
        if job is not None:
            repo.delete_job(session, job)
        dataset = repo.get_dataset(session, dataset_id)
        if dataset is not None:
            repo.delete_dataset(session, dataset)


def run(url: str, n_rows: int, repeat: int, seed: int = 0) -> list[tuple[int, float, int]]:
    """``(rows, seconds, rows counted)`` per repeat."""
    url = normalise_url(url)
    upgrade_head(url)
    rng = np.random.default_rng(seed)
    scores = rng.random(n_rows)
    flags = scores > 0.95
    dataset_id, job_id = _setup(url, n_rows)
    out = []
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            with session_scope(get_sessionmaker(url)) as session:
                repo.replace_scores(session, job_id, scores, flags)
            seconds = time.perf_counter() - start
            with session_scope(get_sessionmaker(url)) as session:
                counted = repo.count_scores(session, job_id)
            out.append((n_rows, seconds, counted))
    finally:
        _teardown(url, dataset_id, job_id)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("POISONSCAN_DATABASE_URL"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("give --database-url or set POISONSCAN_DATABASE_URL")
    load = os.getloadavg()
    print(f"database: {args.database_url.split('@')[-1]}  load average: {load[0]:.2f}")
    print("| repeat | rows | seconds | rows/s | rows counted |")
    print("|---:|---:|---:|---:|---:|")
    for i, (rows, seconds, counted) in enumerate(run(args.database_url, args.rows, args.repeat)):
        print(f"| {i + 1} | {rows:,} | {seconds:.2f} | {rows / seconds:,.0f} | {counted:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
