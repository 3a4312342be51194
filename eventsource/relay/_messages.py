"""What the relay publishes: one message per event, its place in the log in its headers.

A message's subject is ``<prefix>.<partition>``; its payload is the event's data (JSON, as
stored); its headers carry the rest, so that a consumer can rebuild the ``RecordedEvent``
without the database:

==========================  ===================================================
``Nats-Msg-Id``             the event id (the engine drops re-publications)
``Es-Event-Id``             the event id
``Es-Stream-Id``            the stream id, percent-encoded (UTF-8)
``Es-Stream-Version``       the event's version in its stream
``Es-Partition``            the partition
``Es-Position``             the position in the partition
``Es-Event-Type``           the event type name, percent-encoded
``Es-Schema-Version``       the schema version of the payload
``Es-Recorded-At``          when it was stored (ISO 8601, UTC offset)
``Es-Metadata``             the event's metadata as JSON (ASCII, one line)
``Es-Correlation-Id``       from the metadata, when present
``Es-Causation-Id``         from the metadata, when present
``traceparent``             W3C trace context from the metadata, when present
``tracestate``              (the same)
==========================  ===================================================
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

from eventsource.relay._errors import MalformedMessage
from eventsource.store import RecordedEvent

__all__ = [
    "MSG_ID",
    "RelayMessage",
    "check_stream_name",
    "check_subject_prefix",
    "record_from_message",
    "relay_message",
    "subject_for",
]

MSG_ID = "Nats-Msg-Id"
_REQUIRED = (
    "Es-Event-Id",
    "Es-Stream-Id",
    "Es-Stream-Version",
    "Es-Partition",
    "Es-Position",
    "Es-Event-Type",
    "Es-Schema-Version",
    "Es-Recorded-At",
    "Es-Metadata",
)
_PASSED_ON = {
    "correlation_id": "Es-Correlation-Id",
    "causation_id": "Es-Causation-Id",
    "traceparent": "traceparent",
    "tracestate": "tracestate",
}
# A subject token, and a stream name: printable ASCII without whitespace, ".", "*", ">",
# path separators (a stream name is a file name on the server) or "$" (reserved names).
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")
_MAX_NAME = 200
_PLAIN = re.compile(r"[A-Za-z0-9_.~\-]+")  # what percent-encoding leaves as it is


def check_stream_name(name: object) -> str:
    """A JetStream stream name: 1 to 200 of ``A-Z a-z 0-9 _ -``; ValueError otherwise."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name) or len(name) > _MAX_NAME:
        raise ValueError(
            f"stream name {name!r} is not valid: use 1 to {_MAX_NAME} letters, digits,"
            " '_' or '-' (no spaces, '.', '*', '>', '/' or '$')"
        )
    return name


def check_subject_prefix(prefix: object) -> str:
    """A subject prefix: one or more tokens of ``A-Z a-z 0-9 _ -`` joined by ``.``."""
    if (
        not isinstance(prefix, str)
        or len(prefix) > _MAX_NAME
        or not all(_TOKEN.fullmatch(token) for token in prefix.split("."))
    ):
        raise ValueError(
            f"subject prefix {prefix!r} is not valid: use tokens of letters, digits, '_' or"
            " '-' joined by '.' (no spaces, empty tokens, '*' or '>')"
        )
    return prefix


def subject_for(prefix: str, partition: int) -> str:
    """The subject of a partition's messages: ``<prefix>.<partition>``."""
    return f"{prefix}.{partition}"


@dataclass(frozen=True, slots=True)
class RelayMessage:
    """One event as a message: subject, de-duplication id, headers and payload."""

    subject: str
    msg_id: str
    headers: dict[str, str]
    payload: bytes
    partition: int
    position: int


def relay_message(record: RecordedEvent, prefix: str) -> RelayMessage:
    """The message that relays ``record`` under ``prefix``."""
    event_id = record._event_id
    metadata_text = record._metadata_text
    if not metadata_text.isascii():  # one line of ASCII whatever its strings hold
        metadata_text = json.dumps(record.metadata, separators=(",", ":"), ensure_ascii=True)
    headers = {
        MSG_ID: event_id,
        "Es-Event-Id": event_id,
        "Es-Stream-Id": _quoted(record.stream_id),
        "Es-Stream-Version": str(record.stream_version),
        "Es-Partition": str(record.partition),
        "Es-Position": str(record.position),
        "Es-Event-Type": _quoted(record.event_type),
        "Es-Schema-Version": str(record.schema_version),
        "Es-Recorded-At": record.recorded_at.isoformat(),
        "Es-Metadata": metadata_text,
    }
    if any(key in metadata_text for key in _PASSED_ON):
        metadata = record.metadata
        for key, header in _PASSED_ON.items():
            value = metadata.get(key)
            if isinstance(value, str) and value.isprintable():
                headers[header] = quote(value, safe=" =,;:/@")
    return RelayMessage(
        subject=f"{prefix}.{record.partition}",
        msg_id=event_id,
        headers=headers,
        payload=record._data.encode(),
        partition=record.partition,
        position=record.position,
    )


def _quoted(text: str) -> str:
    """``text`` percent-encoded (UTF-8); as it is when it has nothing to encode."""
    return text if _PLAIN.fullmatch(text) else quote(text, safe="")


def record_from_message(headers: dict[str, str] | None, payload: bytes) -> RecordedEvent:
    """The ``RecordedEvent`` a relayed message carries; ``MalformedMessage`` naming the header
    that is missing or malformed."""
    headers = headers or {}
    missing = [name for name in _REQUIRED if name not in headers]
    if missing:
        raise MalformedMessage(f"message lacks the relay headers {missing}")
    name = ""
    try:
        name = "Es-Event-Id"
        event_id = str(uuid.UUID(headers[name]))
        name = "Es-Stream-Id"
        stream_id = unquote(headers[name], errors="strict")
        numbers = {}
        for name in ("Es-Stream-Version", "Es-Partition", "Es-Position", "Es-Schema-Version"):
            numbers[name] = _natural(headers[name])
        name = "Es-Event-Type"
        event_type = unquote(headers[name], errors="strict")
        name = "Es-Recorded-At"
        recorded_at = datetime.fromisoformat(headers[name])
        name = "Es-Metadata"
        metadata: Any = json.loads(headers[name])
        if not isinstance(metadata, dict):
            raise ValueError("not a JSON object")
        name = "payload"
        data = payload.decode()
        json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"message has a malformed {name}: {exc}") from None
    if not stream_id or not event_type:
        raise MalformedMessage("message has an empty Es-Stream-Id or Es-Event-Type")
    return RecordedEvent(
        event_id,
        stream_id,
        numbers["Es-Stream-Version"],
        numbers["Es-Partition"],
        numbers["Es-Position"],
        event_type,
        numbers["Es-Schema-Version"],
        data,
        headers["Es-Metadata"],
        recorded_at,
    )


def _natural(text: str) -> int:
    """A non-negative decimal integer (ValueError otherwise)."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise ValueError(f"{text!r} is not a non-negative integer")
    return int(text)
