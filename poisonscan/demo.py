"""``poisonscan demo``: a real end-to-end run over HTTP on embedded defaults.

It migrates a SQLite database, starts the API (uvicorn, in a thread) and a
Celery worker (a subprocess on the serverless broker), plants a backdoor in a
real dataset that ships inside a package (scikit-learn's digits by default),
uploads it and a clean reserve over HTTP, runs one job per detector, polls
them and prints the detection table against the planted poisons.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detection.attacks import plant
from detection.datasets import load_source, split_reserve
from detection.readers import write_npz
from poisonscan.client import Client, Job
from poisonscan.runtime import free_port, migrate, running_api, running_worker

RESERVE_SIZE = 200
DEMO_PARAMS: dict[str, dict[str, Any]] = {"ct": {"preset": "fast"}}


def embedded_env(data_dir: Path) -> None:
    """Point settings at a fresh demo directory unless the user configured a service."""
    os.environ.setdefault("POISONSCAN_DATA_DIR", str(data_dir))


def demo_api_key() -> str | None:
    """A key of tenant ``demo`` when the configured service requires keys, else None."""
    from service import auth
    from service.config import get_settings
    from service.db import get_sessionmaker, session_scope

    settings = get_settings()
    if not settings.auth_enabled:
        return None
    with session_scope(get_sessionmaker(settings.database_url)) as session:
        return auth.create(session, "demo", name="poisonscan demo").token


def make_poisoned_files(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Plant ``args.attack`` in the dataset; write the inspected set and clean reserve."""
    data = load_source(args.dataset, seed=args.seed)
    inspect_idx, reserve_idx = split_reserve(data.labels, RESERVE_SIZE, args.seed)
    poisoned = plant(
        args.attack,
        data.x[inspect_idx],
        data.labels[inspect_idx],
        data.n_classes,
        {"rate": args.rate, "target_class": 0},
        seed=args.seed,
    )
    write_npz(out_dir / "inspected.npz", poisoned.x, poisoned.labels)
    write_npz(out_dir / "clean.npz", data.x[reserve_idx], data.labels[reserve_idx])
    return {
        "n_samples": int(poisoned.labels.size),
        "poison_indices": poisoned.poison_indices.tolist(),
        "cover_indices": poisoned.cover_indices.tolist(),
    }


def show_progress() -> Callable[[Job], None]:
    """An ``on_update`` for :meth:`Client.wait` that prints each new state/stage line."""
    last = ""

    def show(job: Job) -> None:
        nonlocal last
        line = f"  {job.method:8s} {job.state:10s} {job.stage or '':32s} {100 * job.progress:5.1f}%"
        if line != last:
            print(line, flush=True)
            last = line

    return show


def seconds(job: Job) -> float:
    if job.started_at is None or job.finished_at is None:
        return float("nan")
    return (job.finished_at - job.started_at).total_seconds()


def table(jobs: list[Job]) -> str:
    head = "| method | state | flagged | TPR | FPR | AUROC | AP | seconds |"
    rows = [head, "|---|---|---|---|---|---|---|---|"]
    for job in jobs:
        m = job.metrics or {}
        cells = [
            f"{m[k]:.3f}" if m.get(k) is not None else "-" for k in ("tpr", "fpr", "auroc", "ap")
        ]
        flagged = m.get("n_flagged", (job.summary or {}).get("n_flagged", "-"))
        rows.append(
            f"| {job.method} | {job.state} | {flagged} | "
            + " | ".join(cells)
            + f" | {seconds(job):.1f} |"
        )
    return "\n".join(rows)


def run_demo(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="poisonscan-demo-"))
    embedded_env(work / "state")
    migrate()
    truth = make_poisoned_files(args, work)
    n_poison = len(truth["poison_indices"])
    print(
        f"dataset {args.dataset}: {truth['n_samples']} samples, {args.attack} poison "
        f"{n_poison} ({args.rate:.1%}) -> class 0, clean reserve {RESERVE_SIZE}"
    )
    port = args.port or free_port()
    jobs = []
    with (
        running_worker(work / "worker.log"),
        running_api(port) as url,
        Client(url, timeout=60, api_key=demo_api_key()) as client,
    ):
        inspected = client.upload(work / "inspected.npz", name="inspected")
        clean = client.upload(work / "clean.npz", name="clean")
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            job = client.submit(
                inspected.id,
                method,
                DEMO_PARAMS.get(method, {}),
                clean_dataset_id=clean.id,
                seed=args.seed,
                ground_truth_poison_indices=truth["poison_indices"],
                ground_truth_cover_indices=truth["cover_indices"],
            )
            jobs.append(client.wait(job.id, timeout=args.timeout, on_update=show_progress()))
    print()
    print(table(jobs))
    ok = all(j.state == "succeeded" for j in jobs)
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"some jobs did not succeed; worker log: {work / 'worker.log'}")
    return 0 if ok else 1
