"""Command queue: one table of pending, running and dead commands (done ones are deleted).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    now = sa.func.now()
    op.create_table(
        "commands",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("command_type", sa.Text(), nullable=False),
        sa.Column("payload", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'pending'")),
        sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("lease_token", sa.dialects.postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("dedupe_key", sa.Text(), nullable=True),
        sa.Column("ordering_key", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.Column("causation_id", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("error_traceback", sa.Text(), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.PrimaryKeyConstraint("id", name="commands_pkey"),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'dead')", name="commands_status_check"
        ),
        sa.CheckConstraint("max_attempts >= 1", name="commands_max_attempts_check"),
        schema=schema,
    )
    # The claim's scan: ready commands of a queue, best priority first, then oldest.
    op.create_index(
        "commands_ready",
        "commands",
        ["queue", sa.text("priority DESC"), "run_at", "id"],
        postgresql_where=sa.text("status = 'pending'"),
        schema=schema,
    )
    # One never-started command per dedupe key (retried or released ones do not count).
    op.create_index(
        "commands_dedupe",
        "commands",
        ["dedupe_key"],
        unique=True,
        postgresql_where=sa.text(
            "dedupe_key IS NOT NULL AND status = 'pending' AND started_at IS NULL"
        ),
        schema=schema,
    )
    # Per-key ordering: the earlier live commands of a key.
    op.create_index(
        "commands_ordering",
        "commands",
        ["ordering_key", "id"],
        postgresql_where=sa.text("ordering_key IS NOT NULL AND status <> 'dead'"),
        schema=schema,
    )
    # The reaper's scan: running commands whose lease ran out.
    op.create_index(
        "commands_leases",
        "commands",
        ["lease_until"],
        postgresql_where=sa.text("status = 'running'"),
        schema=schema,
    )


def downgrade() -> None:
    raise RuntimeError("eventsource migrations are forward-only")
