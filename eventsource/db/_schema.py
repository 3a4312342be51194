"""The schema's names that code needs, and where the schema is described.

The schema itself is made by the migrations (``migrations/versions``) and described in full in
``eventsource/db/schema.sql``, which a test compares with a migrated schema's catalog.
"""

from __future__ import annotations

__all__ = ["VERSION_TABLE"]

# Alembic's version table, in the store's schema: the revision it is at.
VERSION_TABLE = "eventsource_version"
