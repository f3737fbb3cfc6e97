"""ORM tables: ``dataset``, ``job``, ``sample_score``, ``webhook_delivery``, ``api_key``, ..."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Double,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


FUSED_METHOD = "ensemble"


def score_methods(methods: list[str]) -> list[str]:
    """Listed detectors plus the rank fusion ``ensemble`` when several run (unless listed)."""
    if len(methods) > 1 and FUSED_METHOD not in methods:
        return [*methods, FUSED_METHOD]
    return list(methods)


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"


FINISHED_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
ACTIVE_STATES = frozenset({JobState.queued, JobState.running, JobState.cancelling})
DEFAULT_TENANT = "default"  # rows from before tenancy, and everything while auth is off


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONType, datetime: UTCDateTime}


def tenant_column() -> Mapped[str]:
    return mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)


def api_key_column() -> Mapped[str | None]:
    """The key that made the row (quotas count by it); kept when the key is revoked."""
    return mapped_column(String(32), index=True)


class Dataset(Base):
    __tablename__ = "dataset"
    # The same bytes are one dataset per tenant: dedup never crosses tenants.
    __table_args__ = (UniqueConstraint("tenant", "sha256"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = tenant_column()
    api_key_id: Mapped[str | None] = api_key_column()
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    n_samples: Mapped[int] = mapped_column(Integer)
    sample_shape: Mapped[list[int]] = mapped_column(JSONType)
    n_classes: Mapped[int] = mapped_column(Integer)
    class_counts: Mapped[list[int]] = mapped_column(JSONType)
    class_names: Mapped[list[str] | None] = mapped_column(JSONType)
    storage_uri: Mapped[str] = mapped_column(String(512))
    source_uri: Mapped[str | None] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetSample(Base):
    """Where sample ``sample_index`` of an archive dataset came from (its path inside)."""

    __tablename__ = "dataset_sample"

    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True
    )
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    source: Mapped[str] = mapped_column(String(1024))


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_state_created_at", "state", "created_at"),
        Index("ix_job_dataset_id", "dataset_id"),
        Index("ix_job_tenant_created_at", "tenant", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = tenant_column()  # the dataset's tenant; scores belong to it too
    api_key_id: Mapped[str | None] = api_key_column()
    dataset_id: Mapped[str] = mapped_column(ForeignKey("dataset.id", ondelete="RESTRICT"))
    clean_dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("dataset.id", ondelete="RESTRICT")
    )
    method: Mapped[str] = mapped_column(String(64))  # the first (default) of ``methods``
    # Several detectors in one job: their names in order, ``params`` keyed by name.
    # NULL on single-method jobs stored before 0006 (read as ``[method]``).
    methods: Mapped[list[str] | None] = mapped_column(JSONType)
    params: Mapped[dict[str, Any]]
    seed: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued.value)
    stage: Mapped[str | None] = mapped_column(String(255))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None]
    summary: Mapped[dict[str, Any] | None]
    ground_truth: Mapped[dict[str, Any] | None]
    code_version: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # "metadata" is SQLAlchemy's own attribute; the column keeps the API's name.
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    heartbeat_at: Mapped[datetime | None]  # written by the worker while the job runs
    # Webhooks (service/webhooks.py): where the terminal event goes, the key it is signed
    # with (HMAC needs it in the clear), and the outbox state: pending until the job ends
    # and a dispatcher claims it (sending), then delivered or failed.
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    webhook_state: Mapped[str | None] = mapped_column(String(16), index=True)
    webhook_claimed_at: Mapped[datetime | None]

    @property
    def method_list(self) -> list[str]:
        """The detectors the job runs, in the order given (the first is the default)."""
        return list(self.methods or [self.method])

    @property
    def score_methods(self) -> list[str]:
        """What ``?method=`` accepts: the listed detectors, plus ``ensemble`` fused from several."""
        return score_methods(self.method_list)

    def params_for(self, method: str) -> dict[str, Any]:
        """The resolved params of one of the job's detectors."""
        if len(self.method_list) == 1:
            return dict(self.params)
        return dict(self.params.get(method) or {})

    @property
    def has_ground_truth(self) -> bool:
        return self.ground_truth is not None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left while running: time so far scaled by the progress still to come."""
        if self.state != JobState.running or self.started_at is None or self.progress < 0.01:
            return None
        elapsed = (utcnow() - self.started_at).total_seconds()
        return round(max(0.0, elapsed * (1.0 - self.progress) / self.progress), 1)


class IdempotencyRecord(Base):
    """The outcome of a POST sent with an ``Idempotency-Key``, per endpoint (``scope``)."""

    __tablename__ = "idempotency_record"

    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    resource_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SampleScore(Base):
    """One score per (job, method, sample); ``rank`` is 1..N within the job's method."""

    __tablename__ = "sample_score"
    __table_args__ = (
        Index("ix_sample_score_job_id_method_rank", "job_id", "method", "rank", unique=True),
    )

    # No foreign key to job: its per-row check costs ~3 s per million rows written.
    # Rows are written only by the worker under the job's row lock and deleted with
    # the job (repository.delete_job), so none can outlive or precede their job.
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    method: Mapped[str] = mapped_column(String(64), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    score: Mapped[float] = mapped_column(Double)
    flagged: Mapped[bool] = mapped_column(Boolean)
    rank: Mapped[int] = mapped_column(Integer)


class WorkerHeartbeat(Base):
    """One row per worker process, refreshed while it lives (``/readyz`` reads it)."""

    __tablename__ = "worker_heartbeat"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class WebhookState(StrEnum):
    pending = "pending"  # the job has a callback_url; its terminal event is not sent yet
    sending = "sending"  # a dispatcher claimed it (re-claimed when stale)
    delivered = "delivered"
    failed = "failed"  # every attempt failed, or the receiver refused it (4xx)


class WebhookDelivery(Base):
    """One attempt to POST a job's event to its ``callback_url`` (the delivery log)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (Index("ix_webhook_delivery_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(64))  # the webhook-id header
    event_type: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(2048))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    succeeded: Mapped[bool] = mapped_column(Boolean)
    duration_ms: Mapped[float] = mapped_column(Float)
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key: a public ``id`` (the token's prefix) and the sha256 of the whole token.

    The token itself is shown once at creation and never stored. Quota columns
    left NULL fall back to the settings' defaults.
    """

    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    max_uploads_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]  # written when a quota is checked (locks the row)
    revoked_at: Mapped[datetime | None]
