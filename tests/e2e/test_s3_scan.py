"""An ``s3://`` dataset scanned end to end: S3 server -> import -> job -> scores, over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from poisonscan.client import Client
from service.config import Settings
from tests.e2e.support import serve, threaded_app
from tests.service.support import npz_bytes, s3_put
from tests.worker.support import planted_digits

N = 600


@pytest.mark.slow
def test_an_s3_dataset_is_scanned_end_to_end(
    settings: Settings, moto_s3: str, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    planted = planted_digits(rate=0.05)
    poison = planted.poison_indices[planted.poison_indices < N].tolist()
    s3_put(
        moto_s3, "datasets/digits/train.npz", npz_bytes(planted.x[:N], planted.labels[:N], tmp_path)
    )
    configured = settings.model_copy(update={"s3_endpoint_url": moto_s3})

    with serve(threaded_app(configured)) as url, Client(url) as ps:
        dataset = ps.import_dataset("s3://datasets/digits/train.npz", idempotency_key="imp-1")
        replay = ps.import_dataset("s3://datasets/digits/train.npz", idempotency_key="imp-1")
        job = ps.submit(
            dataset.id,
            "ss",
            {"budget": 0.2, "base_model": {"arch": "mlp", "epochs": 3}},
            ground_truth_poison_indices=poison,
        )
        done = ps.wait(job.id, timeout=300, interval=0.2, check=True)
        top = next(ps.iter_scores(done.id, page_size=10))

    assert dataset.source_uri == "s3://datasets/digits/train.npz"
    assert (dataset.n_samples, replay.id) == (N, dataset.id)
    assert done.metrics is not None and done.metrics["tpr"] >= 0.5
    assert top["rank"] == 1 and top["source"] == str(top["sample_index"])
