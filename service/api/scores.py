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
from service.api.deps import PrincipalDep, SessionDep, SettingsDep
from service.api.responses import binary, problems
from service.auth import Principal
from service.errors import InvalidInput, field_error
from service.schemas import ScoreOrder, ScorePage

router = APIRouter(prefix="/jobs/{job_id}", tags=["scores"], responses=problems(401))
OrderQuery = Annotated[ScoreOrder, Query(description="score_desc: rank 1 first; index: by sample")]


SCORE_PROBLEMS = problems(404, 409, 422)
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"


@router.get("/scores", response_model=ScorePage, responses=SCORE_PROBLEMS)
def list_scores(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    job_id: str,
    order: OrderQuery = "score_desc",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, description="At most max_page_size (422 above).")] = 100,
    flagged: bool | None = None,
) -> ScorePage:
    """One page of scores; pass ``next_cursor`` back for the next page."""
    if limit > settings.max_page_size:
        msg = f"limit must be at most {settings.max_page_size}"
        raise InvalidInput(msg, [field_error(["query", "limit"], msg, "less_than_equal")])
    return scores.list_page(session, job_id, order, cursor, limit, flagged, principal)


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
    request: Request,
    session: Session,
    principal: Principal,
    job_id: str,
    order: ScoreOrder,
    kind: str,
) -> StreamingResponse:
    scores.require_succeeded(session, job_id, principal)
    batches = scores.iter_batches(request.app.state.sessionmaker, job_id, order)
    chunks, media = (
        (_csv_chunks(batches), CSV) if kind == "csv" else (_parquet_chunks(batches), PARQUET)
    )
    disposition = f'attachment; filename="{job_id}-scores.{kind}"'
    return StreamingResponse(chunks, media_type=media, headers={"Content-Disposition": disposition})


@router.get(
    "/scores.csv",
    response_class=StreamingResponse,
    responses={200: binary(CSV, "Every score, one row per sample."), **SCORE_PROBLEMS},
)
def export_scores_csv(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    job_id: str,
    order: OrderQuery = "index",
) -> StreamingResponse:
    """All scores as CSV (sample_index, score, flagged, rank), streamed."""
    return _export(request, session, principal, job_id, order, "csv")


@router.get(
    "/scores.parquet",
    response_class=StreamingResponse,
    responses={200: binary(PARQUET, "Every score, one row per sample."), **SCORE_PROBLEMS},
)
def export_scores_parquet(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    job_id: str,
    order: OrderQuery = "index",
) -> StreamingResponse:
    """All scores as Parquet, streamed one row group per batch."""
    return _export(request, session, principal, job_id, order, "parquet")
