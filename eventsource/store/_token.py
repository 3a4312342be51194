"""Position tokens: where an append landed, as a string that travels between requests.

A write returns ``result.token``; a later request (a header, a cookie, a query parameter) hands
it back, and ``projections.wait_for(store, "balances", token)`` waits until the read model has
applied that append (read-your-writes across requests and processes)::

    token = repo.save(account).token          # "p1:eventsource:3:1042"
    projections.wait_for(store, "balances", token, timeout=5)

The token names the store's schema, the partition and the position; a token of another schema,
or one that is malformed, is a ``PositionTokenError`` (a ``ValueError``) naming the problem.
"""

from __future__ import annotations

from eventsource._errors import EventSourceError

__all__ = ["PositionTokenError", "make_token", "parse_token"]

_VERSION = "p1"
_MAX_LENGTH = 200  # a schema name (63), two bigints and separators fit with room to spare


class PositionTokenError(EventSourceError, ValueError):
    """A position token is malformed or belongs to another store's schema."""


def make_token(schema: str, partition: int, position: int) -> str:
    """The token of ``position`` in ``partition`` of the log in ``schema``."""
    if not schema:
        raise EventSourceError("this result has no store schema, so it has no position token")
    return f"{_VERSION}:{schema}:{partition}:{position}"


def parse_token(token: object, schema: str) -> tuple[int, int]:
    """(partition, position) of a token made by a store of ``schema``."""
    if not isinstance(token, str):
        raise PositionTokenError(f"a position token is a str, got {type(token).__name__}")
    shown = repr(token if len(token) <= 80 else token[:80] + "…")
    parts = token.split(":") if len(token) <= _MAX_LENGTH else []
    if len(parts) != 4 or parts[0] != _VERSION:
        raise PositionTokenError(
            f"malformed position token {shown}: expected {_VERSION}:<schema>:<partition>:<position>"
        )
    _, of_schema, partition, position = parts
    if not (partition.isascii() and partition.isdigit() and position.isascii()):
        raise PositionTokenError(f"malformed position token {shown}: bad partition")
    if not position.isdigit() or len(position) > 19 or len(partition) > 4:
        raise PositionTokenError(f"malformed position token {shown}: bad position")
    if of_schema != schema:
        raise PositionTokenError(
            f"the position token {shown} is of the store in schema {of_schema!r}, not {schema!r}"
        )
    return int(partition), int(position)
