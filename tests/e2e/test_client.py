"""``poisonscan.client`` against a real server: uvicorn + a Celery worker process.

Both deployments: embedded (SQLite + SQLite broker) and PostgreSQL + Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from poisonscan.client import ApiError, AsyncClient, Client, Job
from service.config import Settings
from service.main import create_app
from tests.e2e.support import serve
from tests.service.support import make_key, npz_bytes
from tests.worker.support import Planted, celery_worker, planted_digits

SS = {"budget": 0.2, "base_model": {"arch": "mlp", "epochs": 3}}
N = 600


@pytest.fixture
def planted() -> Planted:
    p = planted_digits(rate=0.05)
    return Planted(p.x[:N], p.labels[:N], p.poison_indices[p.poison_indices < N])


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with celery_worker(settings, tmp_path / "worker.log"), serve(create_app(settings)) as url:
        yield url


@pytest.mark.slow
def test_sync_client_uploads_runs_waits_and_reads_scores(
    server: str, planted: Planted, tmp_path: Path
) -> None:
    data = npz_bytes(planted.x, planted.labels, tmp_path)
    path = tmp_path / "digits.npz"
    path.write_bytes(data)
    sent: list[tuple[int, int]] = []
    updates: list[str] = []

    with Client(server) as ps:
        dataset = ps.upload(path, name="digits", progress=lambda s, t: sent.append((s, t)))
        again = ps.upload(data, filename="same.npz")
        options = {
            "idempotency_key": "bench-1",
            "metadata": {"team": "e2e"},
            "ground_truth_poison_indices": planted.poison_indices.tolist(),
        }
        job = ps.submit(dataset.id, "ss", SS, **options)
        replay = ps.submit(dataset.id, "ss", SS, **options)  # same key, same body
        done = ps.wait(
            job.id, timeout=300, interval=0.2, on_update=lambda j: updates.append(j.state)
        )
        rows = list(ps.iter_scores(done.id, page_size=128))
        flagged = list(ps.iter_scores(done.id, flagged=True, page_size=50))
        table = ps.scores_table(done.id)
        frame = ps.scores_frame(done.id)
        with pytest.raises(ApiError) as bad:
            ps.submit(dataset.id, "nope")
        with pytest.raises(ApiError) as missing:
            ps.job("missing")
        with pytest.raises(ApiError) as in_use:
            ps.delete_dataset(dataset.id)
        ps.delete_job(done.id)
        ps.delete_dataset(dataset.id)
        with pytest.raises(ApiError) as gone:
            ps.dataset(dataset.id)

    assert (dataset.name, dataset.n_samples, again.id) == ("digits", N, dataset.id)
    assert sent[-1] == (len(data), len(data))
    assert [s for s, _ in sent] == sorted(s for s, _ in sent)
    assert job.state == "queued" and replay.id == job.id
    assert done.metadata == {"team": "e2e"}
    assert done.state == "succeeded", done.error
    assert updates[-1] == "succeeded" and len(updates) >= 2
    assert done.metrics is not None and done.metrics["tpr"] >= 0.5
    assert [r["rank"] for r in rows] == list(range(1, N + 1))
    assert len(flagged) == done.summary["n_flagged"]  # type: ignore[index]
    assert table.num_rows == N
    np.testing.assert_array_equal(table["sample_index"].to_numpy(), np.arange(N))
    assert frame["flagged"].dtype == bool and int(frame["flagged"].sum()) == len(flagged)
    assert bad.value.status == 422 and bad.value.errors[0]["loc"] == ["body", "method"]
    assert missing.value.status == 404
    assert (in_use.value.status, gone.value.status) == (409, 404)


@pytest.mark.slow
def test_async_client_runs_the_same_flow_and_cancels(
    server: str, planted: Planted, tmp_path: Path
) -> None:
    data = npz_bytes(planted.x, planted.labels, tmp_path)

    sent: list[int] = []

    async def flow() -> tuple[Job, list[dict[str, object]], Job]:
        async with AsyncClient(server) as ps:
            dataset = await ps.upload(
                data, filename="digits.npz", progress=lambda s, t: sent.append(s)
            )
            job = await ps.submit(dataset.id, "ss", SS, seed=1)
            done = await ps.wait(job.id, timeout=300, interval=0.2, check=True)
            rows = [row async for row in ps.iter_scores(done.id, order="index", page_size=256)]
            long = await ps.submit(dataset.id, "ss", {"base_model": {"epochs": 200}}, seed=2)
            cancelled = await ps.cancel(long.id)
            return done, rows, await ps.wait(cancelled.id, timeout=120, interval=0.2)

    done, rows, cancelled = asyncio.run(flow())

    assert done.state == "succeeded"
    assert sent[-1] == len(data)
    assert [r["sample_index"] for r in rows] == list(range(N))
    assert cancelled.state == "cancelled"


def test_clients_send_the_api_key(
    settings: Settings, tmp_path: Path, planted: Planted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auth on: ``api_key=`` (sync) and ``$POISONSCAN_API_KEY`` (async) reach the server."""
    auth_settings = settings.model_copy(update={"auth_enabled": True})
    token = make_key(auth_settings, "acme")
    data = npz_bytes(planted.x[:60], planted.labels[:60], tmp_path)
    monkeypatch.delenv("POISONSCAN_API_KEY", raising=False)
    with serve(create_app(auth_settings)) as url:
        with Client(url) as anonymous, pytest.raises(ApiError) as refused:
            anonymous.upload(data)
        with Client(url, api_key=token) as ps:
            dataset = ps.upload(data, filename="d.npz")
            job = ps.submit(dataset.id, "ss", SS)

        async def flow() -> Job:
            async with AsyncClient(url) as aps:
                assert (await aps.dataset(dataset.id)).id == dataset.id
                return await aps.cancel(job.id)

        monkeypatch.setenv("POISONSCAN_API_KEY", token)
        cancelled = asyncio.run(flow())

    assert refused.value.status == 401
    assert cancelled.state == "cancelled"
