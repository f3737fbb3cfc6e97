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
