"""several methods per job: job.methods, sample_score.method

Revision ID: 0006_methods
Revises: 0003
Create Date: 2026-11-26 19:10:00

Scores are keyed by (job, method, sample): existing rows get their job's
method, the primary key and the rank index gain the method. The foreign key
sample_score.job_id -> job.id goes: its per-row check took ~3 s of every
million rows COPYed, and the service keeps the rows consistent itself (written
under the job's row lock, deleted with the job).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_methods"
down_revision: str | None = "0005_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("methods", JSON, nullable=True))
    with op.batch_alter_table("sample_score") as batch:
        batch.add_column(sa.Column("method", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE sample_score SET method = "
        "(SELECT job.method FROM job WHERE job.id = sample_score.job_id)"
    )
    op.drop_index("ix_sample_score_job_id_rank", table_name="sample_score")
    with op.batch_alter_table("sample_score") as batch:
        batch.alter_column("method", existing_type=sa.String(length=64), nullable=False)
        batch.drop_constraint("pk_sample_score", type_="primary")
        batch.create_primary_key("pk_sample_score", ["job_id", "method", "sample_index"])
        batch.drop_constraint("fk_sample_score_job_id_job", type_="foreignkey")
    op.create_index(
        "ix_sample_score_job_id_method_rank",
        "sample_score",
        ["job_id", "method", "rank"],
        unique=True,
    )


def downgrade() -> None:
    op.execute(
        "DELETE FROM sample_score WHERE method <> "
        "(SELECT job.method FROM job WHERE job.id = sample_score.job_id)"
    )
    op.drop_index("ix_sample_score_job_id_method_rank", table_name="sample_score")
    op.execute("DELETE FROM sample_score WHERE job_id NOT IN (SELECT id FROM job)")
    with op.batch_alter_table("sample_score") as batch:
        batch.drop_constraint("pk_sample_score", type_="primary")
        batch.create_primary_key("pk_sample_score", ["job_id", "sample_index"])
        batch.drop_column("method")
        batch.create_foreign_key(
            "fk_sample_score_job_id_job", "job", ["job_id"], ["id"], ondelete="CASCADE"
        )
    op.create_index("ix_sample_score_job_id_rank", "sample_score", ["job_id", "rank"], unique=True)
    with op.batch_alter_table("job") as batch:
        batch.drop_column("methods")
