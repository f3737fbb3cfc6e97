"""Run benchmark detectors through a running poisonscan API, with :mod:`poisonscan.client`."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from detection.readers import write_npz
from detection.types import DetectionInput
from poisonscan.client import Client


def npz_bytes(x: NDArray[Any], labels: NDArray[np.int64]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "set.npz"
        write_npz(path, x, labels)
        return path.read_bytes()


def scores_and_flags(table: pa.Table) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Scores and flags by sample index from a scores export."""
    table = table.sort_by("sample_index")
    scores = table["score"].to_numpy().astype(np.float64)
    return scores, table["flagged"].to_numpy(zero_copy_only=False).astype(bool)


class ApiRunner:
    """Upload the poisoned set and reserve, start a job, wait for it, read its scores."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 3600.0,
        http: httpx.Client | None = None,
        api_key: str | None = None,
    ) -> None:
        self.client = Client(base_url, timeout=120, http=http, api_key=api_key)
        self.timeout = timeout

    def __call__(
        self, inp: DetectionInput, detector: str, params: Mapping[str, Any], seed: int
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        inspected = self.client.upload(npz_bytes(inp.x, inp.labels), filename="inspected.npz")
        clean_id = None
        if inp.clean_x is not None and inp.clean_labels is not None:
            reserve = npz_bytes(inp.clean_x, inp.clean_labels)
            clean_id = self.client.upload(reserve, filename="reserve.npz").id
        job = self.client.submit(
            inspected.id, detector, params, seed=seed, clean_dataset_id=clean_id
        )
        job = self.client.wait(job.id, timeout=self.timeout, check=True)
        return scores_and_flags(self.client.scores_table(job.id))
