"""Settings defaults, refusals and URL normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.db import normalise_url


def test_embedded_defaults_live_under_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POISONSCAN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("POISONSCAN_DATABASE_URL", raising=False)
    monkeypatch.delenv("POISONSCAN_BROKER_URL", raising=False)
    monkeypatch.delenv("POISONSCAN_STORAGE_DIR", raising=False)

    s = Settings()

    assert s.database_url == f"sqlite:///{tmp_path}/poisonscan.sqlite3"
    assert s.broker_url == f"sqla+sqlite:///{tmp_path}/broker.sqlite3"
    assert s.storage_root == tmp_path / "storage"
    assert s.max_upload_bytes == 512 * 1024 * 1024
    assert (s.task_always_eager, s.device, s.job_queue) == (False, "auto", "gpu")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POISONSCAN_DATABASE_URL", "postgresql://u@db/x")
    monkeypatch.setenv("POISONSCAN_BROKER_URL", "redis://r:6379/0")
    monkeypatch.setenv("POISONSCAN_MAX_UPLOAD_BYTES", "1024")

    s = Settings()

    assert (s.database_url, s.broker_url, s.max_upload_bytes) == (
        "postgresql://u@db/x",
        "redis://r:6379/0",
        1024,
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"max_upload_bytes": 0},
        {"max_upload_bytes": -5},
        {"max_page_size": 0},
        {"database_url": "sqlite://"},
        {"database_url": "sqlite:///:memory:"},
        {"broker_url": "memory://"},
        {"job_queue": "gpu; rm -rf"},
    ],
)
def test_unsafe_settings_are_refused(tmp_path: Path, changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, **changes)  # type: ignore[arg-type]


def test_memory_broker_is_allowed_only_when_eager(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, broker_url="memory://", task_always_eager=True)

    assert s.broker_url == "memory://"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_postgres_urls_use_psycopg3(url: str, expected: str) -> None:
    assert normalise_url(url) == expected
