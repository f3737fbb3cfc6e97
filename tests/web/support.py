"""Real jobs for the page tests: sklearn digits poisoned by ``detection.attacks.plant``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from detection.attacks import plant
from detection.attacks.base import PoisonedSet
from detection.datasets import load_source
from service.config import Settings
from tests.service.support import npz_bytes, upload
from worker import jobs as worker_jobs

# Activation clustering on a 2-epoch MLP: seconds on one CPU thread; its top ranks are the
# badnet poisons of poisoned_digits() (checked by the page tests).
FAST_AC = {"base_model": {"arch": "mlp", "epochs": 2}}


@cache
def poisoned_digits(rate: float = 0.05, seed: int = 0) -> PoisonedSet:
    """Real digits (1797 x 16 x 16 x 1) with badnet poisons relabelled to class 0."""
    digits = load_source("digits")
    return plant(
        "badnet", digits.x, digits.labels, digits.n_classes, {"rate": rate, "target_class": 0}, seed
    )


def run_job(
    client: TestClient,
    settings: Settings,
    dataset_id: str,
    method: str = "ac",
    params: dict[str, Any] | None = None,
    ground_truth: list[int] | None = None,
) -> dict[str, Any]:
    """POST the job, run it here with the worker's own function, return the finished job."""
    body: dict[str, Any] = {"dataset_id": dataset_id, "method": method, "params": params or {}}
    if ground_truth is not None:
        body["ground_truth_poison_indices"] = ground_truth
    created = client.post("/jobs", json=body)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert worker_jobs.run_job(job_id, settings) == "succeeded"
    job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
    return job


def upload_poisoned(client: TestClient, tmp_path: Path) -> tuple[str, PoisonedSet]:
    poisoned = poisoned_digits()
    data = npz_bytes(poisoned.x, poisoned.labels, tmp_path)
    resp = upload(client, data, filename="digits-badnet.npz", name="digits-badnet")
    assert resp.status_code == 201, resp.text
    return resp.json()["id"], poisoned


def poison_set(poisoned: PoisonedSet) -> set[int]:
    return {int(i) for i in np.asarray(poisoned.poison_indices)}
