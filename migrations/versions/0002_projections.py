"""Projections: checkpoints with leases per (projection, partition), workers, replay state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    now = sa.func.now()
    op.create_table(
        "projection_checkpoints",
        sa.Column("projection", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("position", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("lease_token", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_position", sa.BigInteger(), nullable=True),
        sa.Column("error_attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("error_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("projection", "partition", name="projection_checkpoints_pkey"),
        schema=schema,
    )
    op.create_table(
        "projection_workers",
        sa.Column("projection", sa.Text(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.PrimaryKeyConstraint("projection", "worker_id", name="projection_workers_pkey"),
        schema=schema,
    )
    op.create_table(
        "projection_state",
        sa.Column("projection", sa.Text(), primary_key=True),
        sa.Column("paused_by", sa.Text(), nullable=True),
        sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        schema=schema,
    )
    op.create_table(
        "projection_skips",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("projection", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("event_type", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("skipped_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        schema=schema,
    )


def downgrade() -> None:
    raise RuntimeError("eventsource migrations are forward-only")
