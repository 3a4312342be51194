"""An index of the dead commands, for the operations page and the dead-letter commands.

- ``commands_dead``: the dead commands by queue and id. ``commands dead``, the page's dead
  letters and ``commands purge`` find them without visiting the live ones, however many
  pending commands the queue holds. Only dead rows are in it, so enqueues, claims and acks
  (whose rows are pending or running) never write to it.

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_index(
        "commands_dead",
        "commands",
        ["queue", "id"],
        postgresql_where=sa.text("status = 'dead'"),
        schema=schema,
    )


def downgrade() -> None:
    raise RuntimeError("eventsource migrations are forward-only")
