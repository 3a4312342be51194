"""Alembic environment: migrations run on the connection handed over by eventsource._migrate."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
schema = context.config.attributes["schema"]
version_table = context.config.attributes["version_table"]

context.configure(
    connection=connection,
    version_table=version_table,
    version_table_schema=schema,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
