"""auth and tenancy: api_key; tenant and api_key_id on dataset and job; dedup per tenant

Existing rows belong to the tenant ``default``.

Revision ID: 0004_auth
Revises: 0003
Create Date: 2026-11-26 19:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_auth"
down_revision: str | None = "0003"  # the file 0003_prod.py
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _owner_columns(table: str) -> None:
    with op.batch_alter_table(table) as batch:
        batch.add_column(
            sa.Column("tenant", sa.String(length=64), server_default="default", nullable=False)
        )
        batch.add_column(sa.Column("api_key_id", sa.String(length=32), nullable=True))
        batch.create_index(batch.f(f"ix_{table}_api_key_id"), ["api_key_id"], unique=False)


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("max_active_jobs", sa.Integer(), nullable=True),
        sa.Column("max_uploads_per_minute", sa.Integer(), nullable=True),
        sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("last_used_at", timestamp(), nullable=True),
        sa.Column("revoked_at", timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
    )
    op.create_index(op.f("ix_api_key_tenant"), "api_key", ["tenant"], unique=False)
    _owner_columns("dataset")
    with op.batch_alter_table("dataset") as batch:
        batch.drop_constraint("uq_dataset_sha256", type_="unique")
        batch.create_unique_constraint(batch.f("uq_dataset_tenant_sha256"), ["tenant", "sha256"])
    _owner_columns("job")
    op.create_index("ix_job_tenant_created_at", "job", ["tenant", "created_at"], unique=False)


def downgrade() -> None:
    # Refuses (unique violation) once two tenants stored the same bytes: decide which stays.
    op.drop_index("ix_job_tenant_created_at", table_name="job")
    with op.batch_alter_table("job") as batch:
        batch.drop_index(batch.f("ix_job_api_key_id"))
        batch.drop_column("api_key_id")
        batch.drop_column("tenant")
    with op.batch_alter_table("dataset") as batch:
        batch.drop_constraint("uq_dataset_tenant_sha256", type_="unique")
        batch.create_unique_constraint(batch.f("uq_dataset_sha256"), ["sha256"])
        batch.drop_index(batch.f("ix_dataset_api_key_id"))
        batch.drop_column("api_key_id")
        batch.drop_column("tenant")
    op.drop_index(op.f("ix_api_key_tenant"), table_name="api_key")
    op.drop_table("api_key")
