"""Queries. Functions take the session first and flush; the boundary commits.

Vocabulary: ``get_x``, ``get_x_by_y``, ``create_x``, ``list_x``, ``update_x``,
``mark_job_*``. Score writes replace a job's rows in one transaction
(delete, then COPY on PostgreSQL or executemany elsewhere), so a retried job
never duplicates rows.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray
from sqlalchemy import String, and_, cast, delete, func, insert, select, update
from sqlalchemy.orm import Session

from detection.metrics import rank_by_score
from service.models import (
    FINISHED_STATES,
    Dataset,
    DatasetSample,
    Job,
    JobState,
    SampleScore,
    utcnow,
)

ScoreOrder = Literal["score_desc", "index"]
COPY_CHUNK = 1 << 20
SCORE_COLUMNS = ("job_id", "method", "sample_index", "score", "flagged", "rank")


class InvalidTransition(ValueError):
    """A state change that the job's current state does not allow."""


# --- datasets ---------------------------------------------------------------


def _visible(row: Any, tenant: str | None) -> Any:
    """``row`` when ``tenant`` may see it (None: any tenant), else None: as if missing."""
    return row if row is not None and (tenant is None or row.tenant == tenant) else None


def get_dataset(session: Session, dataset_id: str, tenant: str | None = None) -> Dataset | None:
    dataset: Dataset | None = _visible(session.get(Dataset, dataset_id), tenant)
    return dataset


def get_dataset_by_sha256(session: Session, sha256: str, tenant: str) -> Dataset | None:
    """The tenant's dataset of these bytes (dedup never crosses tenants)."""
    stmt = select(Dataset).where(Dataset.sha256 == sha256, Dataset.tenant == tenant)
    return session.scalars(stmt).first()


def count_datasets_with_file(session: Session, storage_uri: str) -> int:
    """Rows sharing a content-addressed file (tenants that stored the same bytes)."""
    stmt = select(func.count()).select_from(Dataset).where(Dataset.storage_uri == storage_uri)
    return session.scalar(stmt) or 0


def create_dataset(session: Session, **fields: Any) -> Dataset:
    dataset = Dataset(**fields)
    session.add(dataset)
    session.flush()
    return dataset


def create_dataset_samples(session: Session, dataset_id: str, sources: Sequence[str]) -> None:
    """One ``dataset_sample`` row per sample: where it came from (archive path)."""
    rows = [
        {"dataset_id": dataset_id, "sample_index": i, "source": src[:1024]}
        for i, src in enumerate(sources)
    ]
    if rows:
        session.execute(insert(DatasetSample), rows)


def count_jobs_using_dataset(session: Session, dataset_id: str) -> int:
    stmt = select(func.count()).select_from(Job)
    stmt = stmt.where((Job.dataset_id == dataset_id) | (Job.clean_dataset_id == dataset_id))
    return session.scalar(stmt) or 0


def delete_dataset(session: Session, dataset: Dataset) -> None:
    """Delete the row (its ``dataset_sample`` rows cascade)."""
    session.execute(delete(DatasetSample).where(DatasetSample.dataset_id == dataset.id))
    session.delete(dataset)
    session.flush()


def list_datasets(
    session: Session, limit: int, offset: int, tenant: str | None = None
) -> tuple[Sequence[Dataset], int]:
    conds = [] if tenant is None else [Dataset.tenant == tenant]
    total = session.scalar(select(func.count()).select_from(Dataset).where(*conds)) or 0
    stmt = select(Dataset).where(*conds).order_by(Dataset.created_at.desc(), Dataset.id)
    return session.scalars(stmt.limit(limit).offset(offset)).all(), total


# --- jobs -------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilters:
    state: str | None = None
    method: str | None = None
    dataset_id: str | None = None
    tenant: str | None = None  # None: every tenant (the admin scope)


def create_job(session: Session, **fields: Any) -> Job:
    job = Job(state=JobState.queued.value, progress=0.0, attempts=0, **fields)
    session.add(job)
    session.flush()
    return job


def get_job(
    session: Session, job_id: str, for_update: bool = False, tenant: str | None = None
) -> Job | None:
    job = session.get(Job, job_id, with_for_update=for_update, populate_existing=for_update)
    visible: Job | None = _visible(job, tenant)
    return visible


def list_jobs(
    session: Session, filters: JobFilters, limit: int, offset: int
) -> tuple[Sequence[Job], int]:
    conds = [
        col == value
        for col, value in (
            (Job.state, filters.state),
            (Job.method, filters.method),
            (Job.dataset_id, filters.dataset_id),
            (Job.tenant, filters.tenant),
        )
        if value is not None
    ]
    total = session.scalar(select(func.count()).select_from(Job).where(*conds)) or 0
    stmt = select(Job).where(*conds).order_by(Job.created_at.desc(), Job.id.desc())
    return session.scalars(stmt.limit(limit).offset(offset)).all(), total


def _set_job(session: Session, job_id: str, states: Sequence[str], **values: Any) -> bool:
    """Conditional update: only when the job is in one of ``states``."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.state.in_(states))
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def update_job_progress(session: Session, job_id: str, stage: str, progress: float) -> bool:
    active = (JobState.running, JobState.cancelling)
    return _set_job(session, job_id, active, stage=stage[:255], progress=float(progress))


def mark_job_running(session: Session, job_id: str, code_version: str) -> bool:
    """queued (or running, on a redelivered task) -> running; counts the attempt."""
    return _set_job(
        session,
        job_id,
        (JobState.queued, JobState.running),
        state=JobState.running.value,
        stage="load",
        progress=0.0,
        error=None,
        attempts=Job.attempts + 1,
        started_at=utcnow(),
        code_version=code_version,
    )


def mark_job_succeeded(
    session: Session, job_id: str, summary: dict[str, Any], metrics: dict[str, Any] | None
) -> bool:
    return _set_job(
        session,
        job_id,
        (JobState.running,),
        state=JobState.succeeded.value,
        stage="done",
        progress=1.0,
        summary=summary,
        metrics=metrics,
        finished_at=utcnow(),
    )


def mark_job_failed(session: Session, job_id: str, error: str) -> bool:
    active = (JobState.queued, JobState.running, JobState.cancelling)
    return _set_job(
        session, job_id, active, state=JobState.failed.value, error=error, finished_at=utcnow()
    )


def mark_job_cancelled(session: Session, job_id: str) -> bool:
    active = (JobState.queued, JobState.running, JobState.cancelling)
    return _set_job(session, job_id, active, state=JobState.cancelled.value, finished_at=utcnow())


def request_cancel(session: Session, job: Job) -> Job:
    """queued -> cancelled now; running -> cancelling (the worker stops cooperatively).

    Cancelling a cancelled or cancelling job is a no-op; a succeeded or failed
    job raises :class:`InvalidTransition`.
    """
    state = JobState(job.state)
    if state in (JobState.cancelling, JobState.cancelled):
        return job
    if state in FINISHED_STATES:
        raise InvalidTransition(f"job {job.id} already {state.value}")
    now: datetime = utcnow()
    job.cancel_requested_at = now
    if state is JobState.queued:
        job.state, job.finished_at = JobState.cancelled.value, now
    else:
        job.state = JobState.cancelling.value
    job.updated_at = now
    session.flush()
    return job


def delete_job(session: Session, job: Job) -> None:
    """Delete the job and its scores."""
    session.execute(delete(SampleScore).where(SampleScore.job_id == job.id))
    session.delete(job)
    session.flush()


def get_job_state(session: Session, job_id: str, tenant: str | None = None) -> str | None:
    stmt = select(Job.state).where(Job.id == job_id)
    if tenant is not None:
        stmt = stmt.where(Job.tenant == tenant)
    return session.scalar(stmt)


# --- scores -----------------------------------------------------------------

# PostgreSQL binary COPY: a 19-byte header, then per row a field count and
# (length, big-endian value) per field; every row of one write has the same
# width, so numpy lays the whole payload out at once (no per-row Python).
PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
PGCOPY_TRAILER = struct.pack(">h", -1)


def _copy_dtype(job_id: bytes, method: bytes) -> np.dtype[Any]:
    return np.dtype(
        [
            ("n_fields", ">i2"),
            *_field("job_id", f"S{len(job_id)}"),
            *_field("method", f"S{len(method)}"),
            *_field("sample_index", ">i4"),
            *_field("score", ">f8"),
            *_field("flagged", "u1"),
            *_field("rank", ">i4"),
        ]
    )


def _field(name: str, dtype: str) -> list[tuple[str, str]]:
    return [(f"{name}_len", ">i4"), (name, dtype)]


def copy_payload(
    job_id: str, method: str, scores: NDArray[np.float64], flags: NDArray[np.bool_]
) -> bytes:
    """The rows of one (job, method) in PostgreSQL's binary COPY format (columns: SCORE_COLUMNS)."""
    jid, name = job_id.encode(), method.encode()
    rows = np.empty(scores.shape[0], dtype=_copy_dtype(jid, name))
    rows["n_fields"] = len(SCORE_COLUMNS)
    values: dict[str, Any] = {
        "job_id": jid,
        "method": name,
        "sample_index": np.arange(scores.shape[0]),
        "score": scores,
        "flagged": flags,
        "rank": rank_by_score(scores),
    }
    for column, value in values.items():
        rows[column] = value
        rows[f"{column}_len"] = rows.dtype.fields[column][0].itemsize
    return PGCOPY_HEADER + rows.tobytes() + PGCOPY_TRAILER


def _insert_rows(
    session: Session,
    job_id: str,
    method: str,
    scores: NDArray[np.float64],
    flags: NDArray[np.bool_],
) -> None:
    """Plain executemany of tuples on the driver (SQLite): no per-row ORM work."""
    n = int(scores.shape[0])
    rows = list(
        zip(
            repeat(job_id, n),
            repeat(method, n),
            range(n),
            scores.tolist(),
            flags.tolist(),
            rank_by_score(scores).tolist(),
            strict=True,
        )
    )
    marks = ", ".join("?" * len(SCORE_COLUMNS))
    sql = f"INSERT INTO sample_score ({', '.join(SCORE_COLUMNS)}) VALUES ({marks})"
    session.connection().exec_driver_sql(sql, rows)


def delete_scores(session: Session, job_id: str, method: str | None = None) -> None:
    """Delete the job's scores (of one method, or all)."""
    stmt = delete(SampleScore).where(SampleScore.job_id == job_id)
    if method is not None:
        stmt = stmt.where(SampleScore.method == method)
    session.execute(stmt)


def insert_scores(
    session: Session,
    job_id: str,
    method: str,
    scores: NDArray[np.float64],
    flags: NDArray[np.bool_],
) -> int:
    """Insert one row per sample for (job, method): binary COPY on PostgreSQL."""
    scores = np.asarray(scores, dtype=np.float64)
    flags = np.asarray(flags, dtype=bool)
    if scores.ndim != 1 or flags.shape != scores.shape:
        raise ValueError("scores and flags must be 1-D arrays of equal length")
    if not scores.size:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        _copy_rows(session, copy_payload(job_id, method, scores, flags))
    else:
        _insert_rows(session, job_id, method, scores, flags)
    return int(scores.size)


def replace_scores(
    session: Session,
    job_id: str,
    scores: NDArray[np.float64],
    flags: NDArray[np.bool_],
    method: str | None = None,
) -> int:
    """Replace the scores of one method (default: the job's) in the session's transaction."""
    if method is None:
        method = session.scalar(select(Job.method).where(Job.id == job_id))
        if method is None:
            raise ValueError(f"job {job_id} does not exist")
    delete_scores(session, job_id, method)
    return insert_scores(session, job_id, method, scores, flags)


def _copy_rows(session: Session, payload: bytes) -> None:
    data = memoryview(payload)
    raw = session.connection().connection.driver_connection
    sql = f"COPY sample_score ({', '.join(SCORE_COLUMNS)}) FROM STDIN WITH (FORMAT binary)"
    with raw.cursor() as cur, cur.copy(sql) as copy:  # type: ignore[union-attr]
        for start in range(0, len(data), COPY_CHUNK):
            copy.write(data[start : start + COPY_CHUNK])


def count_scores(session: Session, job_id: str, method: str | None = None) -> int:
    """Rows of the job (of one method, or all)."""
    stmt = select(func.count()).select_from(SampleScore).where(SampleScore.job_id == job_id)
    if method is not None:
        stmt = stmt.where(SampleScore.method == method)
    return session.scalar(stmt) or 0


def _order_key(order: ScoreOrder) -> Any:
    return SampleScore.rank if order == "score_desc" else SampleScore.sample_index


SOURCE = func.coalesce(DatasetSample.source, cast(SampleScore.sample_index, String)).label("source")
SCORE_ROW = (SampleScore.sample_index, SampleScore.score, SampleScore.flagged, SampleScore.rank)


def _with_sources(stmt: Any, job_id: str) -> Any:
    """Join each score to its sample's source (archive path; the row index otherwise)."""
    dataset_id = select(Job.dataset_id).where(Job.id == job_id).scalar_subquery()
    on = and_(
        DatasetSample.dataset_id == dataset_id,
        DatasetSample.sample_index == SampleScore.sample_index,
    )
    return stmt.outerjoin(DatasetSample, on)


def _of(job_id: str, method: str) -> Any:
    return and_(SampleScore.job_id == job_id, SampleScore.method == method)


def page_scores(
    session: Session,
    job_id: str,
    method: str,
    after: int | None,
    limit: int,
    flagged: bool | None = None,
    order: ScoreOrder = "score_desc",
) -> Sequence[Any]:
    """Keyset page of one method: rows after key ``after`` (a rank or a sample index).

    Rows carry ``sample_index``, ``score``, ``flagged``, ``rank`` and ``source``.
    """
    key = _order_key(order)
    stmt = _with_sources(select(*SCORE_ROW, SOURCE), job_id).where(_of(job_id, method))
    if flagged is not None:
        stmt = stmt.where(SampleScore.flagged == flagged)
    if after is not None:
        stmt = stmt.where(key > after)
    return session.execute(stmt.order_by(key).limit(limit)).all()


def iter_scores(
    session: Session,
    job_id: str,
    method: str,
    order: ScoreOrder = "index",
    batch_size: int = 50_000,
) -> Iterator[pa.RecordBatch]:
    """All scores of one method as Arrow batches (columns: :data:`SCORE_SCHEMA`)."""
    key = _order_key(order)
    after = -1  # below every sample index and rank
    while True:
        stmt = _with_sources(select(*SCORE_ROW, SOURCE), job_id)
        stmt = stmt.where(_of(job_id, method), key > after)
        rows = session.execute(stmt.order_by(key).limit(batch_size)).all()
        if not rows:
            return
        yield _rows_to_batch(rows)
        after = rows[-1][0] if order == "index" else rows[-1][3]


SCORE_SCHEMA = pa.schema(
    [
        ("sample_index", pa.int64()),
        ("score", pa.float64()),
        ("flagged", pa.bool_()),
        ("rank", pa.int64()),
        ("source", pa.string()),
    ]
)


def _rows_to_batch(rows: Sequence[Any]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True))
    return pa.RecordBatch.from_arrays(
        [pa.array(col, type=field.type) for col, field in zip(columns, SCORE_SCHEMA, strict=True)],
        schema=SCORE_SCHEMA,
    )
