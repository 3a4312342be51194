"""Stored events as records: their rows, the lazy decoding of their payloads, and the
decoding of a page of them in one pass."""

from __future__ import annotations

import gc
import json
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from uuid import UUID

from eventsource._events import Event, EventDecodeError, decode_event, json_decoder

__all__ = ["RecordedEvent", "decode_records", "decoding", "paused_gc", "records"]

# PostgreSQL's binary timestamptz: microseconds since this moment.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# A payload with its event id spliced in: '{"event_id":"<36 characters>",' + the payload's fields.
_DOCUMENT_HEAD = '{"event_id":"'
_ID_END = len(_DOCUMENT_HEAD) + 36


# The columns of a record's row: event_id, stream_id, stream_version, partition, position,
# event_type, schema_version, data, metadata, recorded_at (the constructor's order).
_DATA, _METADATA, _RECORDED_AT = 7, 8, 9


class RecordedEvent:
    """A stored event with its place in the log. The model is decoded on first access.

    A record keeps the row it was read from: the store's readers build one per event with a
    single unpacking of the row's place and type (``_of_row``), which the constructor uses too.
    """

    __slots__ = (
        "_event",
        "_metadata",
        "_recorded_at",
        "_row",
        "_timezone",
        "event_type",
        "partition",
        "position",
        "schema_version",
        "stream_id",
        "stream_version",
    )
    _row: tuple[Any, ...]  # the columns, in the constructor's order
    _timezone: tzinfo | None  # of a binary ``recorded_at``
    _event: Event | None  # the decoded event, once decoded
    _metadata: dict[str, Any] | None  # the decoded metadata, once read
    _recorded_at: datetime  # ``recorded_at``, once read
    stream_id: str
    stream_version: int
    partition: int
    position: int
    event_type: str
    schema_version: int

    def __new__(  # noqa: PLR0917 - the columns of a stored event, in the order of its row
        cls,
        event_id: str,
        stream_id: str,
        stream_version: int,
        partition: int,
        position: int,
        event_type: str,
        schema_version: int,
        data: str,
        metadata: str,
        recorded_at: datetime | int,
        tz: tzinfo | None = None,
    ) -> RecordedEvent:
        """A stored event from its columns; the payload is decoded on first access.

        Rows of the store's own readers (``event_pages`` of ``queries.sql``) have an empty
        ``event_id``: it is spliced into ``data``, ready for the model's validator; their
        ``recorded_at`` is PostgreSQL's binary timestamptz (microseconds since 2000), made a
        datetime in ``tz`` (the connection's time zone) when it is first read.
        """
        columns = (event_id, stream_id, stream_version, partition, position, event_type)
        return cls._of_row((*columns, schema_version, data, metadata, recorded_at), tz)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its row and time zone (what it decodes lazily is decoded again)."""
        return _of_row, (self._row, self._timezone)

    @classmethod
    def _of_row(cls, row: tuple[Any, ...], tz: tzinfo | None = None) -> RecordedEvent:
        """The record of a row of the store's reads (its ten columns, in the constructor's order):
        the row is kept as it is, and its place and type copied out of it in one unpacking."""
        record = _new_record(cls)
        record._row = row
        record._timezone = tz
        record._event = None
        record._metadata = None
        (
            _,
            record.stream_id,
            record.stream_version,
            record.partition,
            record.position,
            record.event_type,
            record.schema_version,
            _,
            _,
            _,
        ) = row
        return record

    @property
    def event_id(self) -> UUID:
        """The event's id."""
        return UUID(self._id())

    def _id(self) -> str:
        """The event id's text."""
        event_id: str = self._row[0] or self._row[_DATA][len(_DOCUMENT_HEAD) : _ID_END]
        return event_id

    def _payload(self) -> str:
        """The stored payload's JSON text."""
        data: str = self._row[_DATA]
        if self._row[0]:
            return data
        return "{" + data[_ID_END + 2 :] if len(data) > _ID_END + 2 else "{}"

    def _metadata_json(self) -> str:
        """The stored metadata's JSON text."""
        text: str = self._row[_METADATA]
        return text

    @property
    def recorded_at(self) -> datetime:
        """When the event was stored (the database's clock), in the connection's time zone."""
        try:
            return self._recorded_at
        except AttributeError:  # not read yet
            pass
        value: datetime | int = self._row[_RECORDED_AT]
        if isinstance(value, int):
            value = (_PG_EPOCH + timedelta(microseconds=value)).astimezone(self._timezone)
        self._recorded_at = value
        return value

    @property
    def event(self) -> Event:
        """The decoded (and upcast) event; ``UnknownEventType`` if its class is not loaded.

        ``EventDecodeError`` (naming the type, stream and version) if the stored payload does
        not fit its class, ``UpcastError`` if it cannot be upgraded to it.
        """
        if self._event is None:
            try:
                self._event = decode_event(
                    self.event_type, self.schema_version, self._payload(), self._id()
                )
            except EventDecodeError as exc:
                raise exc.at(self.stream_id, self.stream_version) from exc.__cause__
        return self._event

    @property
    def data(self) -> dict[str, Any]:
        """The stored payload as a dict, without decoding it to its model."""
        result: dict[str, Any] = json.loads(self._payload())
        return result

    @property
    def metadata(self) -> dict[str, Any]:
        """The event's metadata (decoded on first access)."""
        if self._metadata is None:
            self._metadata = json.loads(self._metadata_json())
        return self._metadata

    def __repr__(self) -> str:
        return (
            f"<RecordedEvent {self.event_type} {self.stream_id!r} v{self.stream_version}"
            f" @{self.partition}:{self.position}>"
        )


_new_record = object.__new__
_of_row = RecordedEvent._of_row


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused for a block (re-enabled after, if it was on).

    A batch allocates several objects per event, none of them cyclic; collections triggered
    by them would rescan every live object of the process over and over.
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def records(rows: Sequence[Sequence[Any]]) -> list[RecordedEvent]:
    """Records from result rows, their events decoded on first access.

    The collector is paused while the batch is built (this halves the cost of a replay).
    """
    with paused_gc():
        return [RecordedEvent._of_row(tuple(row)) for row in rows]


def decode_records(batch: Sequence[RecordedEvent]) -> None:
    """Decode the events of loaded types in ``batch``, in order; the first failure is raised."""
    with paused_gc():  # a model is several objects, none of them cyclic
        deque(decoding(batch), maxlen=0)


def decoding(records: Iterable[RecordedEvent]) -> Iterator[RecordedEvent]:
    """``records`` (of ``event_pages`` rows), each with its event decoded (if its class is
    loaded) as it is handed out; a record whose event fails raises instead, naming the event.

    Payloads stored at their class's schema version go straight from their JSON text to the
    model (one validator call each); the others, and any that fail, take ``decode_event``'s
    way, which upcasts them or raises the error naming the event.
    """
    decoders: dict[str, tuple[int, Any]] = {}
    for record in records:
        event_type = record.event_type
        decoder = decoders.get(event_type)
        if decoder is None:
            decoder = decoders[event_type] = json_decoder(event_type)
        version, validate = decoder
        if validate is None:
            pass  # not loaded: ``record.event`` says so when it is read
        elif record.schema_version == version:  # stored at its class's schema version
            try:  # an ``event_pages`` row: the id is spliced into the document already
                record._event = validate(record._row[_DATA])
            except (ValueError, RecursionError):
                _ = record.event  # decode_event raises it again, naming the event
        else:
            _ = record.event  # upcast by decode_event (or its error, naming the event)
        yield record
