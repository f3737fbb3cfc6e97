"""The Alembic history matches the models on both backends and downgrades cleanly."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from service.config import Settings
from service.db import get_engine
from service.migrate import alembic_config

TABLES = {
    "alembic_version",
    "dataset",
    "dataset_sample",
    "api_key",
    "idempotency_record",
    "job",
    "sample_score",
    "worker_heartbeat",
}


def _tables(settings: Settings) -> set[str]:
    engine = get_engine(settings.database_url)
    return set(inspect(engine).get_table_names())


def test_head_matches_the_models(settings: Settings) -> None:
    cfg = alembic_config(settings.database_url)

    command.check(cfg)  # raises when autogenerate would emit operations

    assert _tables(settings) == TABLES


def test_downgrade_and_upgrade_again(settings: Settings) -> None:
    cfg = alembic_config(settings.database_url)
    try:
        command.downgrade(cfg, "base")
        assert _tables(settings) == {"alembic_version"}
    finally:
        command.upgrade(cfg, "head")
    assert _tables(settings) == TABLES
