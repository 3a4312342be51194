"""Trace context on command rows.

- ``commands.trace_context``: the W3C trace context (``traceparent``, and ``tracestate`` or
  ``baggage`` when there were) of the span that enqueued the command, as a JSON object; NULL
  when it was enqueued outside a recording span (no OpenTelemetry SDK, or no trace). The
  worker's span of each attempt continues that trace.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.add_column(
        "commands",
        sa.Column("trace_context", postgresql.JSONB(), nullable=True),
        schema=schema,
    )


def downgrade() -> None:
    raise RuntimeError("eventsource migrations are forward-only")
