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
import time
from pathlib import Path
from typing import Any

import httpx

from detection.attacks import plant
from detection.datasets import load_source, split_reserve
from detection.readers import write_npz
from poisonscan.runtime import free_port, migrate, running_api, running_worker

RESERVE_SIZE = 200
DEMO_PARAMS: dict[str, dict[str, Any]] = {"ct": {"preset": "fast"}}


def embedded_env(data_dir: Path) -> None:
    """Point settings at a fresh demo directory unless the user configured a service."""
    os.environ.setdefault("POISONSCAN_DATA_DIR", str(data_dir))


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


def upload(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as fh:
        resp = client.post("/datasets", files={"file": (path.name, fh)}, data={"name": path.stem})
    resp.raise_for_status()
    dataset_id: str = resp.json()["id"]
    return dataset_id


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    resp = client.post("/jobs", json=body)
    if resp.status_code != 202:
        raise RuntimeError(f"POST /jobs failed: {resp.status_code} {resp.text}")
    job_id: str = resp.json()["id"]
    return job_id


def poll(client: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").raise_for_status().json()
        line = f"  {job['method']:8s} {job['state']:10s} {job.get('stage') or '':32s} "
        line += f"{100 * (job.get('progress') or 0):5.1f}%"
        if line != last:
            print(line, flush=True)
            last = line
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1.0)
    raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s")


def seconds(job: dict[str, Any]) -> float:
    from datetime import datetime

    if not job.get("started_at") or not job.get("finished_at"):
        return float("nan")
    start = datetime.fromisoformat(job["started_at"])
    end = datetime.fromisoformat(job["finished_at"])
    return (end - start).total_seconds()


def table(jobs: list[dict[str, Any]]) -> str:
    head = "| method | state | flagged | TPR | FPR | AUROC | AP | seconds |"
    rows = [head, "|---|---|---|---|---|---|---|---|"]
    for job in jobs:
        m = job.get("metrics") or {}
        cells = [f"{m[k]:.3f}" if k in m else "-" for k in ("tpr", "fpr", "auroc", "ap")]
        flagged = m.get("n_flagged", (job.get("summary") or {}).get("n_flagged", "-"))
        rows.append(
            f"| {job['method']} | {job['state']} | {flagged} | "
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
    with running_worker(work / "worker.log"), running_api(port) as url:
        client = httpx.Client(base_url=url, timeout=60)
        inspected, clean = (
            upload(client, work / "inspected.npz"),
            upload(client, work / "clean.npz"),
        )
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            body = {
                "dataset_id": inspected,
                "clean_dataset_id": clean,
                "method": method,
                "params": DEMO_PARAMS.get(method, {}),
                "seed": args.seed,
                "ground_truth_poison_indices": truth["poison_indices"],
                "ground_truth_cover_indices": truth["cover_indices"],
            }
            jobs.append(poll(client, submit(client, body), args.timeout))
    print()
    print(table(jobs))
    ok = all(j["state"] == "succeeded" for j in jobs)
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"some jobs did not succeed; worker log: {work / 'worker.log'}")
    return 0 if ok else 1
