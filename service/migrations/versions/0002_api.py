"""api: sample identity (dataset.class_names, dataset_sample)

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


def json_type() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("dataset") as batch:
        batch.add_column(sa.Column("class_names", json_type(), nullable=True))
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


def downgrade() -> None:
    op.drop_table("dataset_sample")
    with op.batch_alter_table("dataset") as batch:
        batch.drop_column("class_names")
