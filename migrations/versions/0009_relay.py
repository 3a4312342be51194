"""The relay: its checkpoints with leases per (relay, partition), and its workers.

A relay publishes the log to a streaming engine (NATS JetStream), one partition at a time, in
order. ``relay_checkpoints`` holds, per relay (named after its target stream) and partition,
the position that the engine has acknowledged up to, the lease of the worker that relays the
partition (owner, token, expiry) and the last error that held it up. ``relay_workers`` holds
the live workers of each relay, with their heartbeats: they share the partitions.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    now = sa.func.now()
    op.create_table(
        "relay_checkpoints",
        sa.Column("relay", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("position", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("lease_token", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("relay", "partition", name="relay_checkpoints_pkey"),
        schema=schema,
    )
    op.create_table(
        "relay_workers",
        sa.Column("relay", sa.Text(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.PrimaryKeyConstraint("relay", "worker_id", name="relay_workers_pkey"),
        schema=schema,
    )


def downgrade() -> None:
    raise RuntimeError("eventsource migrations are forward-only")
