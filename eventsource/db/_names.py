"""Names in SQL: quoted schema names and LISTEN/NOTIFY channel names."""

from __future__ import annotations

import hashlib

from sqlalchemy.dialects import postgresql

from eventsource._checks import check_schema_name

__all__ = ["channel_name", "listen_statement", "quote_schema"]

_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


def quote_schema(schema: str) -> str:
    """The quoted identifier for a schema name; ``ValueError`` for a name that is not one."""
    return _PREPARER.quote_schema(check_schema_name(schema))


# PostgreSQL truncates identifiers, channel names included, to 63 bytes; pg_notify refuses
# longer ones outright.
MAX_IDENTIFIER = 63


def channel_name(schema: str, suffix: str = "") -> str:
    """``eventsource.<schema><suffix>``, or with a digest of the schema name if that is too long.

    Listeners and notifiers both call this, so they always agree on the name.
    """
    name = f"eventsource.{schema}{suffix}"
    if len(name.encode("utf-8")) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(schema.encode("utf-8")).hexdigest()[:20]
    return f"eventsource.{digest}{suffix}"


def listen_statement(channel: str) -> str:
    """``LISTEN`` on ``channel``, quoted as an identifier (a channel name is data)."""
    return f"LISTEN {_PREPARER.quote(channel)}"
