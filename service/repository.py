"""Queries. Functions take the session first and flush; the boundary commits.

Vocabulary: ``get_x``, ``get_x_by_y``, ``create_x``, ``list_x``, ``update_x``,
``mark_job_*``. Score writes replace a job's rows in one transaction
(delete, then COPY on PostgreSQL or executemany elsewhere), so a retried job
never duplicates rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
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
SCORE_COLUMNS = ("job_id", "sample_index", "score", "flagged", "rank")


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


def _score_table(job_id: str, scores: NDArray[np.float64], flags: NDArray[np.bool_]) -> pa.Table:
    n = int(scores.shape[0])
    return pa.table(
        {
            "job_id": pa.repeat(job_id, n),
            "sample_index": pa.array(np.arange(n, dtype=np.int64)),
            "score": pa.array(np.asarray(scores, dtype=np.float64)),
            "flagged": pa.array(np.asarray(flags, dtype=bool)),
            "rank": pa.array(rank_by_score(scores)),
        }
    )


def replace_scores(
    session: Session, job_id: str, scores: NDArray[np.float64], flags: NDArray[np.bool_]
) -> int:
    """Delete the job's scores and insert one row per sample, in the session's transaction."""
    if scores.ndim != 1 or flags.shape != scores.shape:
        raise ValueError("scores and flags must be 1-D arrays of equal length")
    session.execute(delete(SampleScore).where(SampleScore.job_id == job_id))
    table = _score_table(job_id, scores, flags)
    if session.get_bind().dialect.name == "postgresql":
        _copy_rows(session, table)
    elif table.num_rows:
        session.execute(insert(SampleScore), table.to_pylist())
    return int(table.num_rows)


def _copy_rows(session: Session, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
    data = memoryview(sink.getvalue())
    raw = session.connection().connection.driver_connection
    sql = f"COPY sample_score ({', '.join(SCORE_COLUMNS)}) FROM STDIN WITH (FORMAT csv)"
    with raw.cursor() as cur, cur.copy(sql) as copy:  # type: ignore[union-attr]
        for start in range(0, len(data), COPY_CHUNK):
            copy.write(data[start : start + COPY_CHUNK])


def count_scores(session: Session, job_id: str) -> int:
    stmt = select(func.count()).select_from(SampleScore).where(SampleScore.job_id == job_id)
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


def page_scores(
    session: Session,
    job_id: str,
    after: int | None,
    limit: int,
    flagged: bool | None = None,
    order: ScoreOrder = "score_desc",
) -> Sequence[Any]:
    """Keyset page: rows after key ``after`` (a rank or a sample index, per ``order``).

    Rows carry ``sample_index``, ``score``, ``flagged``, ``rank`` and ``source``.
    """
    key = _order_key(order)
    stmt = _with_sources(select(*SCORE_ROW, SOURCE), job_id).where(SampleScore.job_id == job_id)
    if flagged is not None:
        stmt = stmt.where(SampleScore.flagged == flagged)
    if after is not None:
        stmt = stmt.where(key > after)
    return session.execute(stmt.order_by(key).limit(limit)).all()


def iter_scores(
    session: Session, job_id: str, order: ScoreOrder = "index", batch_size: int = 50_000
) -> Iterator[pa.RecordBatch]:
    """All scores of a job as Arrow batches (columns: :data:`SCORE_SCHEMA`)."""
    key = _order_key(order)
    after = -1  # below every sample index and rank
    while True:
        stmt = _with_sources(select(*SCORE_ROW, SOURCE), job_id)
        stmt = stmt.where(SampleScore.job_id == job_id, key > after)
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
