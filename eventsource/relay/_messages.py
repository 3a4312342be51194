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
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

from eventsource.relay._errors import MalformedMessage
from eventsource.store import RecordedEvent

__all__ = [
    "MSG_ID",
    "RelayMessage",
    "check_stream_name",
    "check_subject_prefix",
    "messages_from_rows",
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


class RelayMessage(NamedTuple):
    """One event as a message: subject, de-duplication id, header block and payload.

    ``header`` is the message's NATS header block without its closing blank line (the sink
    adds its own headers after it); ``headers`` parses it back into a dict.
    """

    subject: str
    msg_id: str
    header: bytes
    payload: bytes
    partition: int
    position: int

    @property
    def headers(self) -> dict[str, str]:
        """The headers, by name."""
        lines = self.header.decode().split("\r\n")[1:]
        return dict(line.split(": ", 1) for line in lines if line)


def relay_message(record: RecordedEvent, prefix: str) -> RelayMessage:
    """The message that relays ``record`` under ``prefix``."""
    recorded_at = record.recorded_at.isoformat()
    event_id = record._id()
    fixed = (
        f"Nats-Msg-Id: {event_id}\r\nEs-Event-Id: {event_id}\r\n"
        f"Es-Stream-Version: {record.stream_version}\r\nEs-Partition: {record.partition}\r\n"
        f"Es-Position: {record.position}\r\nEs-Schema-Version: {record.schema_version}\r\n"
        f"Es-Recorded-At: {recorded_at}\r\n"
    )
    row = (
        record.partition,
        record.position,
        event_id,
        record.stream_id,
        record.event_type,
        fixed,
        record._metadata_json(),
        record._payload(),
    )
    return next(messages_from_rows([row], prefix))


def messages_from_rows(
    rows: Iterable[tuple[int, int, str, str, str, str, str, str]], prefix: str
) -> Iterator[RelayMessage]:
    """The messages of rows of the relay's read (``read_partitions``), in their order.

    A row is (partition, position, event id, stream id, event type, the header lines that
    need no encoding, metadata as JSON, data as JSON); the header block is made with one
    format per event, as the relay makes tens of thousands a second.
    """
    plain = _PLAIN.fullmatch
    types: dict[str, str] = {}
    for partition, position, event_id, stream_id, event_type, fixed, meta, data in rows:
        sid = stream_id if plain(stream_id) else quote(stream_id, safe="")
        quoted = types.get(event_type)
        if quoted is None:
            quoted = types[event_type] = _quoted(event_type)
        # One line of ASCII, whatever its strings hold.
        text = meta if meta.isascii() else json.dumps(json.loads(meta), separators=(",", ":"))
        extra = _passed_on(text) if ("_id" in text or "trace" in text) else ""
        header = (
            f"NATS/1.0\r\n{fixed}Es-Stream-Id: {sid}\r\nEs-Event-Type: {quoted}\r\n"
            f"Es-Metadata: {text}\r\n{extra}"
        )
        yield RelayMessage(
            f"{prefix}.{partition}", event_id, header.encode(), data.encode(), partition, position
        )


def _passed_on(metadata_text: str) -> str:
    """The header lines of the metadata's correlation, causation and trace context."""
    metadata = json.loads(metadata_text)
    lines = ""
    for key, header in _PASSED_ON.items():
        value = metadata.get(key)
        if isinstance(value, str) and value.isprintable():
            lines += f"{header}: {quote(value, safe=' =,;:/@')}\r\n"
    return lines


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
