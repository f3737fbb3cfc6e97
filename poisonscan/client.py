"""The official Python client of the poisonscan API (httpx; sync and async).

It installs with ``pip install "poisonscan[client]"``: httpx and pyarrow, no
torch, Celery or server code. ::

    with Client("http://127.0.0.1:8000", api_key="psk_...") as ps:
        data = ps.upload("poisoned.npz", progress=lambda sent, total: ...)
        job = ps.wait(ps.submit(data.id, "ct", {"preset": "fast"}).id)
        frame = ps.scores_frame(job.id)  # pandas, one row per sample

Every error response (RFC 9457 problem+json) raises :class:`ApiError` with the
status, ``detail`` and the fields at fault. Reads (GET/HEAD) are retried when the
server sheds load (429/503: after its ``Retry-After``, at most ``max_wait_s`` each)
or a kept-alive connection drops as it is reused, ``retries`` times at most.
``api_key`` (default: the ``POISONSCAN_API_KEY`` environment variable) is sent as
``Authorization: Bearer`` on every call, also through an ``http`` client passed in.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
)

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_URL = "http://127.0.0.1:8000"
Progress = Callable[[int, int], None]
Source = str | os.PathLike[str] | bytes | BinaryIO
ScoreOrder = Literal["score_desc", "index"]


class ApiError(Exception):
    """An error response; ``problem`` is its RFC 9457 body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.detail = str(problem.get("detail") or problem.get("title") or status)
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        super().__init__(f"{status}: {self.detail}")


class JobFailed(Exception):
    """:meth:`Client.wait` with ``check=True`` saw a job end other than ``succeeded``."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"job {job.id} {job.state}: {job.error or ''}".rstrip(": "))


class _Read(BaseModel):
    model_config = ConfigDict(extra="allow")


class Dataset(_Read):
    id: str
    name: str
    format: str
    sha256: str
    size_bytes: int
    n_samples: int
    n_classes: int
    sample_shape: list[int]
    class_counts: list[int]
    class_names: list[str] | None = None
    source_uri: str | None = None


class Job(_Read):
    id: str
    dataset_id: str
    method: str
    methods: list[str] = []
    score_methods: list[str] = []
    state: str
    stage: str | None = None
    progress: float = 0.0
    error: str | None = None
    params: dict[str, Any] = {}
    summary: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    metadata: dict[str, str] = {}
    created_at: datetime | None = None
    started_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    finished_at: datetime | None = None
    eta_seconds: float | None = None
    callback_url: str | None = None
    webhook_state: str | None = None
    webhook_secret: str | None = None  # only in the response that created the job

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class ScorePage(_Read):
    items: list[dict[str, Any]]
    next_cursor: str | None


# --------------------------------------------------------------------------- shared pieces


def check(resp: httpx.Response) -> httpx.Response:
    """``resp``, or :class:`ApiError` for a 4xx/5xx."""
    if resp.status_code < 400:
        return resp
    try:
        body = resp.json()
    except ValueError:
        body = {"detail": resp.text[:500]}
    raise ApiError(resp.status_code, body if isinstance(body, dict) else {"detail": str(body)})


SHED_STATUSES = frozenset({429, 503})  # the server's back-pressure answers
DROPPED = (httpx.ReadError, httpx.RemoteProtocolError)  # an idle connection closed under us
SAFE_METHODS = frozenset({"GET", "HEAD"})


def retry_after_s(resp: httpx.Response, default: float, maximum: float) -> float:
    """The response's ``Retry-After`` in seconds (delta form), capped; else ``default``."""
    value = resp.headers.get("Retry-After", "")
    try:
        return min(maximum, max(0.0, float(value)))
    except ValueError:
        return min(maximum, default)


def retry_policy(retries: int, max_wait_s: float) -> dict[str, Any]:
    """tenacity arguments for a read: retry shed load and dropped connections."""

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        if outcome is None or outcome.failed:
            return min(max_wait_s, 0.2 * state.attempt_number)
        return retry_after_s(outcome.result(), 1.0, max_wait_s)

    def last_response(state: RetryCallState) -> Any:
        assert state.outcome is not None
        return state.outcome.result()  # re-raises a final transport error

    return {
        "stop": stop_after_attempt(retries + 1),
        "wait": wait,
        "retry": retry_if_exception_type(DROPPED)
        | retry_if_result(lambda r: r.status_code in SHED_STATUSES),
        "retry_error_callback": last_response,
    }


def backoff(initial: float, maximum: float, factor: float) -> Iterator[float]:
    """Poll intervals: ``initial``, then ``factor`` times longer, capped at ``maximum``."""
    delay = initial
    while True:
        yield delay
        delay = min(maximum, delay * factor)


def job_body(
    dataset_id: str,
    method: str | Sequence[str],
    params: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``POST /jobs`` body; options left at None are not sent.

    ``method`` is one detector name, or several (``methods``: one job, one shared base
    model, params keyed by method name, a fused ``ensemble`` score stored beside them).
    """
    named: dict[str, Any] = (
        {"method": method} if isinstance(method, str) else {"methods": list(method)}
    )
    body = {"dataset_id": dataset_id, **named, "params": dict(params or {})}
    return body | {k: v for k, v in options.items() if v is not None}


def auth_header(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer`` for ``api_key``, else for ``$POISONSCAN_API_KEY``, else none."""
    key = api_key if api_key is not None else os.environ.get("POISONSCAN_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def key_header(idempotency_key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": idempotency_key} if idempotency_key else {}


def read_table(data: bytes, fmt: Literal["parquet", "csv"]) -> pa.Table:
    """A scores export as an Arrow table; ``flagged`` must be boolean."""
    table = (
        pq.read_table(io.BytesIO(data)) if fmt == "parquet" else pacsv.read_csv(io.BytesIO(data))
    )
    if table.num_rows and not pa.types.is_boolean(table.schema.field("flagged").type):
        raise ValueError(f"flagged must be true/false, got {table.schema.field('flagged').type}")
    return table


class _ProgressReader(io.RawIOBase):
    """A read-only file that reports ``(bytes sent, total)`` as httpx streams it."""

    def __init__(self, raw: IO[bytes], total: int, progress: Progress) -> None:
        self.raw, self.total, self.progress, self.sent = raw, total, progress, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.sent += len(chunk)
        self.progress(self.sent, self.total)
        return chunk

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = self.raw.seek(offset, whence)
        if whence == io.SEEK_SET and offset == 0:
            self.sent = 0
        return position

    def tell(self) -> int:
        return self.raw.tell()


def open_source(source: Source, filename: str | None) -> tuple[IO[bytes], str, bool]:
    """(file, filename, whether we opened it) for a path, bytes or an open binary file."""
    if isinstance(source, bytes):
        return io.BytesIO(source), filename or "dataset.npz", True
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return path.open("rb"), filename or path.name, True
    return source, filename or Path(getattr(source, "name", "dataset.npz")).name, False


def upload_files(fh: IO[bytes], filename: str, progress: Progress | None) -> dict[str, Any]:
    if progress is None:
        return {"file": (filename, fh)}
    total = fh.seek(0, io.SEEK_END)
    fh.seek(0)
    return {"file": (filename, _ProgressReader(fh, total, progress))}


# --------------------------------------------------------------------------- sync


class Client:
    """Synchronous client. Pass ``http`` to reuse an ``httpx.Client`` (its base URL is used)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        http: httpx.Client | None = None,
        api_key: str | None = None,
        retries: int = 4,
        max_wait_s: float = 30.0,
    ) -> None:
        self.http = http or httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=dict(headers or {})
        )
        self._owned = http is None
        self._auth = auth_header(api_key)
        self._retry = retry_policy(retries, max_wait_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = {**self._auth, **kwargs.get("headers", {})}
        if method not in SAFE_METHODS:
            return check(self.http.request(method, url, **kwargs))
        resp: httpx.Response = Retrying(**self._retry)(self.http.request, method, url, **kwargs)
        return check(resp)

    def upload(
        self,
        source: Source,
        *,
        name: str | None = None,
        filename: str | None = None,
        progress: Progress | None = None,
        idempotency_key: str | None = None,
    ) -> Dataset:
        """Upload a dataset file; the same bytes return the dataset stored first."""
        fh, fname, owned = open_source(source, filename)
        try:
            resp = self._call(
                "POST",
                "/datasets",
                files=upload_files(fh, fname, progress),
                data={"name": name} if name else None,
                headers=key_header(idempotency_key),
            )
        finally:
            if owned:
                fh.close()
        return Dataset.model_validate(resp.json())

    def import_dataset(
        self, uri: str, *, name: str | None = None, idempotency_key: str | None = None
    ) -> Dataset:
        """Have the server copy a dataset from s3://, https:// or an allowed file:// path."""
        body = {"uri": uri} | ({"name": name} if name else {})
        resp = self._call(
            "POST", "/datasets/import", json=body, headers=key_header(idempotency_key)
        )
        return Dataset.model_validate(resp.json())

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._call("GET", f"/datasets/{dataset_id}").json())

    def submit(
        self,
        dataset_id: str,
        method: str | Sequence[str],
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """Start a job; ``options``: seed, clean_dataset_id, metadata, ground_truth_*_indices,
        callback_url, webhook_secret (the returned job carries the signing secret once)."""
        body = job_body(dataset_id, method, params, options)
        resp = self._call("POST", "/jobs", json=body, headers=key_header(idempotency_key))
        return Job.model_validate(resp.json())

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._call("GET", f"/jobs/{job_id}").json())

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        interval: float = 0.5,
        max_interval: float = 10.0,
        on_update: Callable[[Job], None] | None = None,
        check: bool = False,
    ) -> Job:
        """Poll with exponential backoff until the job finished (``check``: raise unless it
        succeeded); :class:`TimeoutError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for delay in backoff(interval, max_interval, 1.5):
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job.finished:
                return _checked(job, check)
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
            time.sleep(delay)
        raise AssertionError("unreachable")

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._call("POST", f"/jobs/{job_id}/cancel").json())

    def delete_job(self, job_id: str) -> None:
        self._call("DELETE", f"/jobs/{job_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self._call("DELETE", f"/datasets/{dataset_id}")

    def score_page(
        self,
        job_id: str,
        *,
        order: ScoreOrder = "score_desc",
        flagged: bool | None = None,
        limit: int = 1000,
        cursor: str | None = None,
        method: str | None = None,
    ) -> ScorePage:
        """One page of one method's scores (``None``: the job's first method)."""
        query = _page_query(order, flagged, limit, cursor, method)
        resp = self._call("GET", f"/jobs/{job_id}/scores", params=query)
        return ScorePage.model_validate(resp.json())

    def iter_scores(
        self,
        job_id: str,
        *,
        order: ScoreOrder = "score_desc",
        flagged: bool | None = None,
        page_size: int = 1000,
        method: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every score row, page after page (rank 1 first by default)."""
        cursor: str | None = None
        while True:
            page = self.score_page(
                job_id, order=order, flagged=flagged, limit=page_size, cursor=cursor, method=method
            )
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def scores_table(
        self,
        job_id: str,
        *,
        fmt: Literal["parquet", "csv"] = "parquet",
        method: str | None = None,
    ) -> pa.Table:
        """Every score of one method as an Arrow table, by sample index (one download)."""
        query = _export_query(method)
        resp = self._call("GET", f"/jobs/{job_id}/scores.{fmt}", params=query)
        return read_table(resp.content, fmt)

    def scores_frame(self, job_id: str) -> Any:
        """Every score as a pandas DataFrame (needs pandas)."""
        return self.scores_table(job_id).to_pandas()

    def methods(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._call("GET", "/methods").json()
        return out


def _checked(job: Job, check: bool) -> Job:
    if check and job.state != "succeeded":
        raise JobFailed(job)
    return job


def _page_query(
    order: ScoreOrder,
    flagged: bool | None,
    limit: int,
    cursor: str | None,
    method: str | None = None,
) -> dict[str, Any]:
    query: dict[str, Any] = {"order": order, "limit": limit}
    if method is not None:
        query["method"] = method
    if flagged is not None:
        query["flagged"] = "true" if flagged else "false"
    if cursor is not None:
        query["cursor"] = cursor
    return query


def _export_query(method: str | None) -> dict[str, Any]:
    """``order=index`` (and ``method`` when one is chosen) for the score exports."""
    return {"order": "index"} if method is None else {"order": "index", "method": method}


# --------------------------------------------------------------------------- async


class AsyncClient:
    """The same calls as :class:`Client`, awaitable (``httpx.AsyncClient``)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        http: httpx.AsyncClient | None = None,
        api_key: str | None = None,
        retries: int = 4,
        max_wait_s: float = 30.0,
    ) -> None:
        self.http = http or httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=dict(headers or {})
        )
        self._owned = http is None
        self._auth = auth_header(api_key)
        self._retry = retry_policy(retries, max_wait_s)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = {**self._auth, **kwargs.get("headers", {})}
        if method not in SAFE_METHODS:
            return check(await self.http.request(method, url, **kwargs))
        retrying = AsyncRetrying(**self._retry)
        resp: httpx.Response = await retrying(self.http.request, method, url, **kwargs)
        return check(resp)

    async def upload(
        self,
        source: Source,
        *,
        name: str | None = None,
        filename: str | None = None,
        progress: Progress | None = None,
        idempotency_key: str | None = None,
    ) -> Dataset:
        fh, fname, owned = open_source(source, filename)
        try:  # httpx streams the multipart body from the (blocking) file in chunks
            resp = await self._call(
                "POST",
                "/datasets",
                files=upload_files(fh, fname, progress),
                data={"name": name} if name else None,
                headers=key_header(idempotency_key),
            )
        finally:
            if owned:
                fh.close()
        return Dataset.model_validate(resp.json())

    async def import_dataset(
        self, uri: str, *, name: str | None = None, idempotency_key: str | None = None
    ) -> Dataset:
        body = {"uri": uri} | ({"name": name} if name else {})
        headers = key_header(idempotency_key)
        resp = await self._call("POST", "/datasets/import", json=body, headers=headers)
        return Dataset.model_validate(resp.json())

    async def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate((await self._call("GET", f"/datasets/{dataset_id}")).json())

    async def submit(
        self,
        dataset_id: str,
        method: str | Sequence[str],
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        body = job_body(dataset_id, method, params, options)
        resp = await self._call("POST", "/jobs", json=body, headers=key_header(idempotency_key))
        return Job.model_validate(resp.json())

    async def job(self, job_id: str) -> Job:
        return Job.model_validate((await self._call("GET", f"/jobs/{job_id}")).json())

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        interval: float = 0.5,
        max_interval: float = 10.0,
        on_update: Callable[[Job], None] | None = None,
        check: bool = False,
    ) -> Job:
        deadline = time.monotonic() + timeout
        for delay in backoff(interval, max_interval, 1.5):
            job = await self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job.finished:
                return _checked(job, check)
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate((await self._call("POST", f"/jobs/{job_id}/cancel")).json())

    async def delete_job(self, job_id: str) -> None:
        await self._call("DELETE", f"/jobs/{job_id}")

    async def delete_dataset(self, dataset_id: str) -> None:
        await self._call("DELETE", f"/datasets/{dataset_id}")

    async def iter_scores(
        self,
        job_id: str,
        *,
        order: ScoreOrder = "score_desc",
        flagged: bool | None = None,
        page_size: int = 1000,
        method: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            query = _page_query(order, flagged, page_size, cursor, method)
            resp = await self._call("GET", f"/jobs/{job_id}/scores", params=query)
            page = ScorePage.model_validate(resp.json())
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def scores_table(
        self,
        job_id: str,
        *,
        fmt: Literal["parquet", "csv"] = "parquet",
        method: str | None = None,
    ) -> pa.Table:
        query = _export_query(method)
        resp = await self._call("GET", f"/jobs/{job_id}/scores.{fmt}", params=query)
        return read_table(resp.content, fmt)

    async def scores_frame(self, job_id: str) -> Any:
        return (await self.scores_table(job_id)).to_pandas()
