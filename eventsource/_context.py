"""Correlation and causation ids carried from a context into the metadata of appended events.

with correlation(correlation_id=request_id):
    repo.save(account)   # its events' metadata carries correlation_id=request_id
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from eventsource._checks import check_name
from eventsource._telemetry import TRACEPARENT, carrier

__all__ = ["correlation", "current_correlation"]

MAX_ID_LENGTH = 500

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eventsource_correlation_id", default=None
)
_causation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eventsource_causation_id", default=None
)


@contextmanager
def correlation(
    correlation_id: str | None = None, causation_id: str | None = None
) -> Iterator[None]:
    """Within this block, appended events carry these ids in their metadata (unless given).

    Ids are given as text (other values, e.g. UUIDs, are turned into text) of 1 to
    ``MAX_ID_LENGTH`` characters: a bad id is a ``ValueError`` here, not a failed append later.
    """
    tokens = []
    if correlation_id is not None:
        value = check_name(str(correlation_id), "correlation_id", max_length=MAX_ID_LENGTH)
        tokens.append((_correlation_id, _correlation_id.set(value)))
    if causation_id is not None:
        value = check_name(str(causation_id), "causation_id", max_length=MAX_ID_LENGTH)
        tokens.append((_causation_id, _causation_id.set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current_correlation() -> tuple[str | None, str | None]:
    """The (correlation_id, causation_id) set by the innermost ``correlation`` block."""
    return _correlation_id.get(), _causation_id.get()


def with_context(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The metadata to store: the caller's, plus the context's ids where the caller gave none.

    ``None`` when there is none at all (stored as ``{}``). Inside a recording span, the
    trace context (``traceparent``, W3C) is added too, unless the caller gave one.
    """
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(
            f"metadata must be a mapping (a dict) or None, got {type(metadata).__name__}:"
            f" {metadata!r}"
        )
    correlation_id, causation_id = _correlation_id.get(), _causation_id.get()
    headers = carrier()
    if not metadata and correlation_id is None and causation_id is None and headers is None:
        return None
    result = dict(metadata) if metadata else {}
    if correlation_id is not None:
        result.setdefault("correlation_id", correlation_id)
    if causation_id is not None:
        result.setdefault("causation_id", causation_id)
    if headers is not None and TRACEPARENT not in result:
        for key, value in headers.items():
            result.setdefault(key, value)
    return result
