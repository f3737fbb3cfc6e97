"""Service and worker settings: one pydantic-settings class, read from ``POISONSCAN_*``.

Embedded defaults need no server: a SQLite database, a SQLite-backed Celery
broker and a storage directory, all under ``data_dir``. Production points
``POISONSCAN_DATABASE_URL`` at Postgres and ``POISONSCAN_BROKER_URL`` at Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything the API and the worker read from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="POISONSCAN_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    data_dir: Path = Path(".poisonscan")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite under data_dir.")
    broker_url: str = Field("", description="Celery broker; default: SQLite under data_dir.")
    storage_dir: Path | None = Field(None, description="Dataset files; default: data_dir/storage.")
    max_upload_bytes: int = Field(512 * MiB, gt=0)
    task_always_eager: bool = False
    device: str = "auto"
    job_queue: str = Field("gpu", pattern=r"^[A-Za-z0-9_.-]+$")
    progress_interval_s: float = Field(1.0, ge=0.0, le=60.0)
    cancel_poll_interval_s: float = Field(1.0, ge=0.0, le=60.0)
    max_page_size: int = Field(1000, gt=0, le=100_000)
    reference_roots: list[Path] = Field(
        default_factory=list,
        description="Directories file:// dataset references may name (JSON list); none: refused.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="An S3-compatible endpoint for s3:// references (MinIO, ...)."
    )
    reference_ca_bundle: Path | None = Field(
        None, description="CA certificates (PEM) that https:// references are verified with."
    )
    # --- production guarantees (hardening, dead jobs, load) ---
    max_decoded_bytes: int = Field(
        1024 * MiB, gt=0, description="Budget for a dataset's decoded arrays/pixels at upload."
    )
    max_image_pixels: int = Field(
        4096 * 4096, gt=0, description="Largest image (width x height), read from its header."
    )
    heartbeat_interval_s: float = Field(5.0, gt=0.0, le=30.0)
    heartbeat_timeout_s: float = Field(
        30.0, gt=0.0, le=60.0, description="A running job whose heartbeat is older is dead."
    )
    reaper_interval_s: float = Field(10.0, gt=0.0, le=60.0)
    max_job_attempts: int = Field(3, ge=1, le=100, description="Requeues of a dead job, then fail.")
    job_time_limit_min_s: float = Field(600.0, gt=0.0)
    job_seconds_per_sample_pass: float = Field(
        0.01, gt=0.0, description="Time limit per estimated sample-pass (slow CPU worker)."
    )
    max_sample_passes: float = Field(
        5e8, gt=0.0, description="Cost cap at POST /jobs: estimated sample-passes of a job."
    )
    api_workers: int = Field(1, ge=1, le=64, description="uvicorn processes of `serve`.")
    api_max_inflight: int = Field(
        32, ge=1, le=10_000, description="Requests in flight per process; above: 503."
    )
    api_db_concurrency: int = Field(
        4,
        ge=1,
        le=1000,
        description="Requests using the database at once per process; the others in flight "
        "wait their turn (fewer threads contending for the GIL: lower latency).",
    )
    db_pool_size: int = Field(0, ge=0, le=1000, description="0: sized to api_max_inflight.")
    db_timeout_s: float = Field(
        15.0, gt=0.0, le=300.0, description="API wait for a pooled connection or a SQLite lock."
    )
    json_logs: bool = True
    # --- webhooks, sweepers, read timeouts ---
    public_base_url: str | None = Field(
        None, description="Absolute base of the links in webhook events; none: relative paths."
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts a callback_url may name (JSON list; '*.example.com' matches "
        "subdomains); empty: any host.",
    )
    webhook_max_attempts: int = Field(5, ge=1, le=20, description="Tries per event, then give up.")
    webhook_backoff_s: float = Field(
        1.0, ge=0.0, le=300.0, description="The first retry's wait; it doubles after each try."
    )
    webhook_backoff_max_s: float = Field(60.0, ge=0.0, le=3600.0)
    webhook_timeout_s: float = Field(10.0, gt=0.0, le=120.0, description="Per attempt.")
    webhook_poll_interval_s: float = Field(1.0, gt=0.0, le=60.0)
    staged_max_age_s: float = Field(
        3600.0,
        ge=0.0,
        description="Staged uploads older than this are leftovers of a crash (keep it above "
        "body_timeout_s plus the time to check a dataset).",
    )
    body_timeout_s: float = Field(
        600.0, gt=0.0, description="A request body must arrive within this (slow clients: 408)."
    )
    header_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="Request headers must arrive within this (else the "
        "connection is closed); `poisonscan serve` only.",
    )
    # --- auth, tenancy and per-key quotas (service/auth.py, service/quotas.py) ---
    auth_enabled: bool = Field(
        False,
        description="Require an API key on every route but health, metrics and docs. "
        "Off: the embedded/local mode, open, every row in tenant 'default'.",
    )
    quota_max_active_jobs: int = Field(
        8, ge=0, description="Per key: queued + running jobs at once (0: no limit)."
    )
    quota_uploads_per_minute: int = Field(
        30, ge=0, description="Per key: new datasets stored in any 60 s (0: no limit)."
    )
    quota_max_stored_bytes: int = Field(
        50 * 1024 * MiB, ge=0, description="Per key: bytes of the datasets it stored (0: no limit)."
    )
    quota_retry_after_s: int = Field(
        30, ge=1, le=86_400, description="Retry-After of a 429 for jobs or stored bytes."
    )

    @model_validator(mode="after")
    def _fill_defaults_and_refuse_unsafe(self) -> Self:
        data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{data_dir / 'poisonscan.sqlite3'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{data_dir / 'broker.sqlite3'}"
        if self.storage_dir is None:
            self.storage_dir = data_dir / "storage"
        self._refuse_unsafe()
        return self

    def _refuse_unsafe(self) -> None:
        db = self.database_url
        if db.startswith("sqlite") and (
            ":memory:" in db or db.rstrip("/") in ("sqlite:", "sqlite:/")
        ):
            raise ValueError("an in-memory SQLite database is invisible to the worker; use a file")
        if self.broker_url.startswith("memory://") and not self.task_always_eager:
            raise ValueError(
                "the memory:// broker cannot reach a worker process; set a real broker"
            )

    @property
    def storage_root(self) -> Path:
        """``storage_dir`` after defaults were filled (never None)."""
        assert self.storage_dir is not None
        return self.storage_dir

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings``)."""
    return Settings()
