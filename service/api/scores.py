"""``/jobs/{id}/scores``: keyset pages and streamed CSV / NDJSON / Parquet exports.

Pages hold at most ``max_page_size`` rows (a larger ``limit`` is a 422, never
cut silently) and name the next page in ``next`` / ``next_cursor`` and a
``Link: <...>; rel="next"`` header. The exports stream every row of the job in
one request. ``method`` picks one of a multi-method job's score sets (default:
the job's first method). Pages and cursors come from :mod:`service.scores`;
this module shapes the exports.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Annotated

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fastapi import APIRouter, Query, Request, Response
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
MethodQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Which method's scores (one of the job's score_methods); default: its first.",
    ),
]


SCORE_PROBLEMS = problems(404, 409, 422)
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
NDJSON = "application/x-ndjson"


@router.get("/scores", response_model=ScorePage, responses=SCORE_PROBLEMS)
def list_scores(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    job_id: str,
    order: OrderQuery = "score_desc",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[
        int,
        Query(
            ge=1,
            description="Rows per page, at most max_page_size (1000 by default; 422 above). "
            "For every row in one request use /scores.ndjson or /scores.csv.",
        ),
    ] = 100,
    flagged: bool | None = None,
    method: MethodQuery = None,
) -> ScorePage:
    """One page of scores; follow ``next`` (or pass ``next_cursor`` back) for the next page."""
    if limit > settings.max_page_size:
        msg = (
            f"limit must be at most {settings.max_page_size}; "
            "the exports (scores.ndjson, scores.csv) return every row in one request"
        )
        err = field_error(["query", "limit"], msg, "less_than_equal")
        err["ctx"] = {"le": settings.max_page_size}
        raise InvalidInput(msg, [err])
    page = scores.list_page(session, job_id, order, cursor, limit, flagged, method, principal)
    if page.next_cursor is not None:
        url = request.url.include_query_params(cursor=page.next_cursor)
        page.next = f"{url.path}?{url.query}"
        response.headers["Link"] = f'<{page.next}>; rel="next"'
    return page


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


def _ndjson_chunks(batches: Iterator[pa.RecordBatch]) -> Iterator[bytes]:
    for batch in batches:
        rows = batch.to_pylist()
        yield b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)


EXPORTS = {
    "csv": (_csv_chunks, CSV),
    "ndjson": (_ndjson_chunks, NDJSON),
    "parquet": (_parquet_chunks, PARQUET),
}


def _export(
    request: Request,
    session: Session,
    principal: Principal,
    job_id: str,
    order: ScoreOrder,
    kind: str,
    method: str | None = None,
) -> StreamingResponse:
    chosen = scores.require_succeeded(session, job_id, method, principal)
    batches = scores.iter_batches(request.app.state.sessionmaker, job_id, order, chosen)
    encode, media = EXPORTS[kind]
    suffix = "" if method is None else f"-{chosen}"
    disposition = f'attachment; filename="{job_id}-scores{suffix}.{kind}"'
    headers = {"Content-Disposition": disposition, "X-Scores-Method": chosen}
    return StreamingResponse(encode(batches), media_type=media, headers=headers)


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
    method: MethodQuery = None,
) -> StreamingResponse:
    """All scores as CSV (sample_index, score, flagged, rank, source), streamed."""
    return _export(request, session, principal, job_id, order, "csv", method)


@router.get(
    "/scores.ndjson",
    response_class=StreamingResponse,
    responses={200: binary(NDJSON, "Every score, one JSON object per line."), **SCORE_PROBLEMS},
)
def export_scores_ndjson(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    job_id: str,
    order: OrderQuery = "index",
    method: MethodQuery = None,
) -> StreamingResponse:
    """All scores as newline-delimited JSON (the page's row objects), streamed."""
    return _export(request, session, principal, job_id, order, "ndjson", method)


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
    method: MethodQuery = None,
) -> StreamingResponse:
    """All scores as Parquet, streamed one row group per batch."""
    return _export(request, session, principal, job_id, order, "parquet", method)
