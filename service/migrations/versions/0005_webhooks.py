"""webhooks: a callback_url per job, its outbox state, and the delivery log

Revision ID: 0005_webhooks
Revises: 0003 (the file 0003_prod.py; the lead re-chains parallel revisions at merge)
Create Date: 2026-11-26 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_webhooks"
down_revision: str | None = "0004_auth"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("callback_url", sa.String(length=2048), nullable=True))
        batch.add_column(sa.Column("webhook_secret", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("webhook_state", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("webhook_claimed_at", timestamp(), nullable=True))
        batch.create_index(batch.f("ix_job_webhook_state"), ["webhook_state"], unique=False)
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("attempted_at", timestamp(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["job.id"],
            name=op.f("fk_webhook_delivery_job_id_job"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery")),
    )
    op.create_index(
        "ix_webhook_delivery_job_id_id", "webhook_delivery", ["job_id", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_delivery_job_id_id", table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
    with op.batch_alter_table("job") as batch:
        batch.drop_index(batch.f("ix_job_webhook_state"))
        batch.drop_column("webhook_claimed_at")
        batch.drop_column("webhook_state")
        batch.drop_column("webhook_secret")
        batch.drop_column("callback_url")
