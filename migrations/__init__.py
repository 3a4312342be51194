"""The eventsource schema's Alembic migrations, shipped in the wheel as ``eventsource._migrations``.

`eventsource db upgrade` (or ``store.upgrade()``) runs them.

Migrations are forward-only and never edited once released; each one reads the target schema
from ``context.config.attributes["schema"]`` so the whole schema name is configurable.
"""
