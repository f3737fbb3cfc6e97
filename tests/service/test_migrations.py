"""The Alembic history matches the models on both backends and downgrades cleanly."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import inspect, text

from service.config import Settings
from service.db import get_engine
from service.migrate import alembic_config
from service.models import utcnow

TABLES = {
    "alembic_version",
    "dataset",
    "dataset_sample",
    "api_key",
    "idempotency_record",
    "job",
    "sample_score",
    "webhook_delivery",
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


def test_0006_gives_existing_scores_their_jobs_method(settings: Settings) -> None:
    cfg = alembic_config(settings.database_url)
    command.downgrade(cfg, "0003")
    try:
        with get_engine(settings.database_url).begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO dataset (id, name, format, sha256, size_bytes, n_samples, "
                    "sample_shape, n_classes, class_counts, storage_uri, created_at) VALUES "
                    "('d', 'd', 'npz', :sha, 1, 2, '[1]', 2, '[1, 1]', 'x', :now)"
                ),
                {"sha": "0" * 64, "now": datetime.now(UTC)},
            )
            conn.execute(
                text(
                    "INSERT INTO job (id, dataset_id, method, params, seed, state, progress, "
                    "code_version, attempts, metadata, created_at, updated_at) VALUES "
                    "('j', 'd', 'ac', '{}', 0, 'succeeded', 1.0, 'v', 1, '{}', :now, :now)"
                ),
                {"now": datetime.now(UTC)},
            )
            conn.execute(
                text(
                    "INSERT INTO sample_score (job_id, sample_index, score, flagged, rank) "
                    "VALUES ('j', 0, 0.5, false, 2), ('j', 1, 0.9, true, 1)"
                )
            )
    finally:
        command.upgrade(cfg, "head")
    with get_engine(settings.database_url).connect() as conn:
        rows = conn.execute(text("SELECT method, sample_index FROM sample_score ORDER BY 2"))
        assert [tuple(r) for r in rows] == [("ac", 0), ("ac", 1)]
        job = conn.execute(text("SELECT methods FROM job WHERE id = 'j'")).scalar_one()
        assert job is None  # read as [method]


def test_0004_keeps_existing_rows_in_the_default_tenant(settings: Settings) -> None:
    """Rows from before tenancy survive the upgrade (SQLite recreates ``dataset``) as 'default'."""
    cfg = alembic_config(settings.database_url)
    engine = get_engine(settings.database_url)
    command.downgrade(cfg, "0003")
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO dataset (id, name, format, sha256, size_bytes, n_samples, "
                    "sample_shape, n_classes, class_counts, storage_uri, created_at) VALUES "
                    "('d1', 'old', 'npz', :sha, 10, 2, '[2]', 2, '[1, 1]', 'x/y.npz', :now)"
                ),
                {"sha": "ab" * 32, "now": utcnow()},
            )
            conn.execute(
                text(
                    "INSERT INTO dataset_sample (dataset_id, sample_index, source) "
                    "VALUES ('d1', 0, 'a.png')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO job (id, dataset_id, method, params, seed, state, progress, "
                    "code_version, attempts, metadata, created_at, updated_at) VALUES "
                    "('j1', 'd1', 'ss', '{}', 0, 'succeeded', 1.0, 'v', 1, '{}', :now, :now)"
                ),
                {"now": utcnow()},
            )
            conn.execute(
                text(
                    "INSERT INTO sample_score (job_id, sample_index, score, flagged, rank) "
                    "VALUES ('j1', 0, 0.5, false, 1)"
                )
            )
    finally:
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, tenant, api_key_id FROM dataset")).all() == [
            ("d1", "default", None)
        ]
        assert conn.execute(text("SELECT id, tenant FROM job")).all() == [("j1", "default")]
        assert conn.execute(text("SELECT count(*) FROM dataset_sample")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM sample_score")).scalar() == 1
