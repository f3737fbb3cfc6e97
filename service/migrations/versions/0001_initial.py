"""initial: dataset, job, sample_score

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def json_type() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dataset",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("sample_shape", json_type(), nullable=False),
        sa.Column("n_classes", sa.Integer(), nullable=False),
        sa.Column("class_counts", json_type(), nullable=False),
        sa.Column("storage_uri", sa.String(length=512), nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset")),
        sa.UniqueConstraint("sha256", name=op.f("uq_dataset_sha256")),
    )
    op.create_table(
        "job",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("dataset_id", sa.String(length=36), nullable=False),
        sa.Column("clean_dataset_id", sa.String(length=36), nullable=True),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("params", json_type(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=255), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metrics", json_type(), nullable=True),
        sa.Column("summary", json_type(), nullable=True),
        sa.Column("ground_truth", json_type(), nullable=True),
        sa.Column("code_version", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("started_at", timestamp(), nullable=True),
        sa.Column("finished_at", timestamp(), nullable=True),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.ForeignKeyConstraint(
            ["clean_dataset_id"],
            ["dataset.id"],
            name=op.f("fk_job_clean_dataset_id_dataset"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset.id"],
            name=op.f("fk_job_dataset_id_dataset"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job")),
    )
    op.create_index("ix_job_dataset_id", "job", ["dataset_id"])
    op.create_index("ix_job_state_created_at", "job", ["state", "created_at"])
    op.create_table(
        "sample_score",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("sample_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["job.id"],
            name=op.f("fk_sample_score_job_id_job"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "sample_index", name=op.f("pk_sample_score")),
    )
    op.create_index("ix_sample_score_job_id_rank", "sample_score", ["job_id", "rank"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_sample_score_job_id_rank", table_name="sample_score")
    op.drop_table("sample_score")
    op.drop_index("ix_job_state_created_at", table_name="job")
    op.drop_index("ix_job_dataset_id", table_name="job")
    op.drop_table("job")
    op.drop_table("dataset")
