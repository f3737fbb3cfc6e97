"""Run benchmark detectors through a running poisonscan API instead of in-process."""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.csv as pacsv
from numpy.typing import NDArray

from detection.readers import write_npz
from detection.types import DetectionInput

FINAL_STATES = ("succeeded", "failed", "cancelled")


class ApiRunner:
    """Upload the poisoned set and reserve, start a job, poll it, read its scores."""

    def __init__(
        self, base_url: str, timeout: float = 3600.0, http: httpx.Client | None = None
    ) -> None:
        self.client = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=120)
        self.timeout = timeout

    def _upload(self, x: NDArray[Any], labels: NDArray[np.int64], name: str) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.npz"
            write_npz(path, x, labels)
            with path.open("rb") as fh:
                resp = self.client.post("/datasets", files={"file": (path.name, fh)})
        resp.raise_for_status()
        dataset_id: str = resp.json()["id"]
        return dataset_id

    def _wait(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.client.get(f"/jobs/{job_id}").raise_for_status().json()
            if job["state"] in FINAL_STATES:
                return job
            time.sleep(1.0)
        raise TimeoutError(f"job {job_id} still running after {self.timeout:.0f} s")

    def __call__(
        self, inp: DetectionInput, detector: str, params: Mapping[str, Any], seed: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        body: dict[str, Any] = {
            "dataset_id": self._upload(inp.x, inp.labels, "inspected"),
            "method": detector,
            "params": dict(params),
            "seed": seed,
        }
        if inp.clean_x is not None and inp.clean_labels is not None:
            body["clean_dataset_id"] = self._upload(inp.clean_x, inp.clean_labels, "reserve")
        resp = self.client.post("/jobs", json=body)
        if resp.status_code != 202:
            raise RuntimeError(f"POST /jobs: {resp.status_code} {resp.text}")
        job = self._wait(resp.json()["id"])
        if job["state"] != "succeeded":
            raise RuntimeError(f"job {job['id']} {job['state']}: {job.get('error')}")
        csv = self.client.get(f"/jobs/{job['id']}/scores.csv").raise_for_status().content
        return scores_from_csv(csv)


def scores_from_csv(data: bytes) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Scores and flags by sample index from a scores CSV (``flagged`` is true/false)."""
    table = pacsv.read_csv(io.BytesIO(data)).sort_by("sample_index")
    flagged = table["flagged"]
    if str(flagged.type) != "bool":
        raise ValueError(f"the flagged column must be true/false, got {flagged.type}")
    scores = table["score"].to_numpy().astype(np.float64)
    return scores, flagged.to_numpy().astype(bool)
