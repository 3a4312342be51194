"""The eventsource schema's Alembic migrations, shipped in the wheel and run by `eventsource db upgrade`.

Migrations are forward-only and never edited once released; each one reads the target schema
from ``context.config.attributes["schema"]`` so the whole schema name is configurable.
"""
