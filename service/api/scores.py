"""``/jobs/{id}/scores``: keyset pages and streamed CSV / Parquet exports.

Pages and cursors come from :mod:`service.scores`; this module shapes the exports.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Annotated

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from service import repository as repo
from service import scores
from service.api.deps import SessionDep, SettingsDep
from service.schemas import ScoreOrder, ScorePage

router = APIRouter(prefix="/jobs/{job_id}", tags=["scores"])
OrderQuery = Annotated[ScoreOrder, Query(description="score_desc: rank 1 first; index: by sample")]


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
    limit = min(limit, settings.max_page_size)
    return scores.list_page(session, job_id, order, cursor, limit, flagged)


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
    scores.require_succeeded(session, job_id)
    batches = scores.iter_batches(request.app.state.sessionmaker, job_id, order)
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
