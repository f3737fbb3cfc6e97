"""production guarantees: job heartbeats, worker heartbeats

Revision ID: 0003
Revises: 0002_api
Create Date: 2026-11-26 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002_api"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("heartbeat_at", timestamp(), nullable=True))
    op.create_table(
        "worker_heartbeat",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("started_at", timestamp(), nullable=False),
        sa.Column("beat_at", timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_heartbeat")),
    )
    op.create_index(
        op.f("ix_worker_heartbeat_beat_at"), "worker_heartbeat", ["beat_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_worker_heartbeat_beat_at"), table_name="worker_heartbeat")
    op.drop_table("worker_heartbeat")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("heartbeat_at")
