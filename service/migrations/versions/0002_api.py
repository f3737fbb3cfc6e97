"""api: sample identity, dataset references, job metadata and cancel time, idempotency keys

Revision ID: 0002_api
Revises: 0001
Create Date: 2026-11-26 16:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_api"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def json_type() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("dataset") as batch:
        batch.add_column(sa.Column("class_names", json_type(), nullable=True))
        batch.add_column(sa.Column("source_uri", sa.String(length=2048), nullable=True))
    op.create_table(
        "dataset_sample",
        sa.Column("dataset_id", sa.String(length=36), nullable=False),
        sa.Column("sample_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset.id"],
            name=op.f("fk_dataset_sample_dataset_id_dataset"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dataset_id", "sample_index", name=op.f("pk_dataset_sample")),
    )
    with op.batch_alter_table("job") as batch:
        batch.add_column(
            sa.Column("metadata", json_type(), nullable=False, server_default=sa.text("'{}'"))
        )
        batch.add_column(sa.Column("cancel_requested_at", timestamp(), nullable=True))
    with op.batch_alter_table("job") as batch:
        batch.alter_column("metadata", server_default=None)
    op.create_table(
        "idempotency_record",
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("resource_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_idempotency_record")),
    )


def downgrade() -> None:
    op.drop_table("idempotency_record")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("cancel_requested_at")
        batch.drop_column("metadata")
    op.drop_table("dataset_sample")
    with op.batch_alter_table("dataset") as batch:
        batch.drop_column("source_uri")
        batch.drop_column("class_names")
