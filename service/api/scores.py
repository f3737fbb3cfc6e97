"""``/jobs/{id}/scores``: keyset pages and streamed CSV / Parquet exports."""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterator
from typing import Annotated

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from service import repository as repo
from service.api.deps import SessionDep, SettingsDep
from service.db import session_scope
from service.errors import ProblemError
from service.models import JobState
from service.schemas import ScoreOrder, ScorePage, ScoreRead

router = APIRouter(prefix="/jobs/{job_id}", tags=["scores"])
OrderQuery = Annotated[ScoreOrder, Query(description="score_desc: rank 1 first; index: by sample")]


def encode_cursor(order: ScoreOrder, flagged: bool | None, key: int) -> str:
    raw = json.dumps({"o": order, "f": flagged, "k": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: ScoreOrder, flagged: bool | None) -> int:
    """The key a cursor continues after; it must come from the same query."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = data["k"]
        same_query = data["o"] == order and data["f"] == flagged
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ProblemError(422, "invalid cursor") from None
    if not isinstance(key, int) or not same_query:
        raise ProblemError(422, "the cursor belongs to a different query (order or flagged)")
    return key


def _succeeded_job_or_error(session: Session, job_id: str) -> None:
    state = repo.get_job_state(session, job_id)
    if state is None:
        raise HTTPException(404, f"job {job_id} not found")
    if state != JobState.succeeded:
        raise HTTPException(409, f"job {job_id} is {state}; scores exist once it succeeded")


@router.get("/scores", response_model=ScorePage)
def list_scores(
    session: SessionDep,
    settings: SettingsDep,
    job_id: str,
    order: OrderQuery = "score_desc",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    flagged: bool | None = None,
) -> ScorePage:
    """One page of scores; pass ``next_cursor`` back for the next page."""
    _succeeded_job_or_error(session, job_id)
    limit = min(limit, settings.max_page_size)
    after = None if cursor is None else decode_cursor(cursor, order, flagged)
    rows = repo.page_scores(session, job_id, after, limit + 1, flagged, order)
    items = [ScoreRead.model_validate(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        key = last.rank if order == "score_desc" else last.sample_index
        next_cursor = encode_cursor(order, flagged, key)
    return ScorePage(items=items, next_cursor=next_cursor)


class _Sink(io.RawIOBase):
    """A write-only file whose bytes are drained by the streaming generator."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self.chunks.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def drain(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def _batches(
    factory: sessionmaker[Session], job_id: str, order: ScoreOrder
) -> Iterator[pa.RecordBatch]:
    with session_scope(factory) as session:
        yield from repo.iter_scores(session, job_id, order)


def _csv_chunks(batches: Iterator[pa.RecordBatch]) -> Iterator[bytes]:
    header = True
    for batch in batches:
        sink = pa.BufferOutputStream()
        pacsv.write_csv(batch, sink, pacsv.WriteOptions(include_header=header))
        header = False
        yield sink.getvalue().to_pybytes()
    if header:
        yield (",".join(repo.SCORE_SCHEMA.names) + "\n").encode()


def _parquet_chunks(batches: Iterator[pa.RecordBatch]) -> Iterator[bytes]:
    sink = _Sink()
    with pq.ParquetWriter(sink, repo.SCORE_SCHEMA) as writer:
        for batch in batches:
            writer.write_batch(batch)
            yield sink.drain()
    yield sink.drain()


def _export(
    request: Request, session: Session, job_id: str, order: ScoreOrder, kind: str
) -> StreamingResponse:
    _succeeded_job_or_error(session, job_id)
    batches = _batches(request.app.state.sessionmaker, job_id, order)
    chunks, media = (
        (_csv_chunks(batches), "text/csv")
        if kind == "csv"
        else (_parquet_chunks(batches), "application/vnd.apache.parquet")
    )
    disposition = f'attachment; filename="{job_id}-scores.{kind}"'
    return StreamingResponse(chunks, media_type=media, headers={"Content-Disposition": disposition})


@router.get("/scores.csv", response_class=StreamingResponse)
def export_csv(
    request: Request, session: SessionDep, job_id: str, order: OrderQuery = "index"
) -> StreamingResponse:
    """All scores as CSV (sample_index, score, flagged, rank), streamed."""
    return _export(request, session, job_id, order, "csv")


@router.get("/scores.parquet", response_class=StreamingResponse)
def export_parquet(
    request: Request, session: SessionDep, job_id: str, order: OrderQuery = "index"
) -> StreamingResponse:
    """All scores as Parquet, streamed one row group per batch."""
    return _export(request, session, job_id, order, "parquet")
