"""The store's value types and the checks of their arguments."""

from __future__ import annotations

import gc
import json
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Generic, TypeVar, overload
from uuid import UUID

from eventsource._checks import (
    BIGINT_MAX,
    MAX_STREAM_ID_LENGTH,
    check_int,
    check_name,
)
from eventsource._errors import (
    EventSourceError,
)
from eventsource._events import Event, EventDecodeError, decode_event, json_decoder
from eventsource._versions import ANY, NO_STREAM, ExpectedVersion
from eventsource.store._token import make_token

__all__ = [
    "ANY",
    "NO_STREAM",
    "AppendResult",
    "ExpectedVersion",
    "PendingAppend",
    "RecordedEvent",
    "partition_for",
]

T = TypeVar("T")

MAX_PARTITIONS = 4096

# PostgreSQL's binary timestamptz: microseconds since this moment.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# A payload with its event id spliced in: '{"event_id":"<36 characters>",' + the payload's fields.
_DOCUMENT_HEAD = '{"event_id":"'
_ID_END = len(_DOCUMENT_HEAD) + 36


def partition_for(partition_key: str, partitions: int) -> int:
    """The partition of a new stream: CRC-32 (IEEE, of the key's UTF-8 bytes) modulo the count.

    CRC-32 is stable across processes, machines and languages (``zlib.crc32``, Java's
    ``java.util.zip.CRC32``, Go's ``hash/crc32.ChecksumIEEE``), unlike Python's ``hash``.
    """
    return zlib.crc32(partition_key.encode("utf-8")) % partitions


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed: the stream's new version and its last event's partition/position.

    ``duplicate`` is true when every event id was already stored (an idempotent retry): the
    stored result is returned and nothing was written.
    """

    stream_id: str
    stream_version: int
    partition: int
    position: int
    duplicate: bool = False
    schema: str = field(default="", repr=False, compare=False)  # the store's, for ``token``

    @property
    def token(self) -> str:
        """Where the append landed, as a string for another request: ``projections.wait_for``
        takes it back (read-your-writes)."""
        return make_token(self.schema, self.partition, self.position)


class _ResultField(Generic[T]):
    """A field of a ``PendingAppend``'s result, read as an attribute of the append itself."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, append: None, owner: type) -> _ResultField[T]: ...
    @overload
    def __get__(self, append: PendingAppend, owner: type) -> T: ...
    def __get__(self, append: PendingAppend | None, owner: type) -> T | _ResultField[T]:
        if append is None:
            return self
        value: T = getattr(append.result, self.name)
        return value


class PendingAppend:
    """An append staged in a transaction; its result fields are readable once it is written.

    The staged events are written when the transaction commits (or at ``tx.flush()``).
    """

    __slots__ = ("_result", "_rolled_back", "count", "stream_id")

    def __init__(self, stream_id: str, count: int) -> None:
        self.stream_id = stream_id
        self.count = count
        self._result: AppendResult | None = None
        self._rolled_back = False

    @property
    def done(self) -> bool:
        """Whether the append was written (its transaction committed or flushed)."""
        return self._result is not None

    @property
    def result(self) -> AppendResult:
        """The written append's result; an error while it is not written or was rolled back."""
        if self._result is None or self._rolled_back:
            state = (
                "was rolled back with its transaction: nothing was written"
                if self._rolled_back
                else "is not written yet: read its result after the transaction commits (or"
                " after tx.flush())"
            )
            raise EventSourceError(f"the append to {self.stream_id!r} {state}")
        return self._result

    # The result's fields, read through ``result`` (an error until the append is written).
    stream_version = _ResultField[int]()
    """The stream's version after the append."""
    partition = _ResultField[int]()
    """The partition of the stream."""
    position = _ResultField[int]()
    """The position of the append's last event in its partition."""
    duplicate = _ResultField[bool]()
    """Whether the events were stored already (the append changed nothing)."""
    token = _ResultField[str]()
    """The position token of the append (see ``AppendResult.token``)."""

    def __repr__(self) -> str:
        state = repr(self._result) if self._result else "not written yet"
        return f"<PendingAppend {self.stream_id!r}: {state}>"


class RecordedEvent:
    """A stored event with its place in the log. The model is decoded on first access."""

    __slots__ = (
        "_data",
        "_event",
        "_event_id",
        "_metadata",
        "_metadata_text",
        "_recorded_at",
        "_timezone",
        "event_type",
        "partition",
        "position",
        "schema_version",
        "stream_id",
        "stream_version",
    )

    def __init__(  # noqa: PLR0917 - built positionally from result rows, on the hot path
        self,
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
    ) -> None:
        """A stored event from its row; the payload is decoded on first access.

        Rows of the store's own readers (``event_pages`` of ``queries.sql``) have an empty
        ``event_id``: it is spliced into ``data``, ready for the model's validator; their
        ``recorded_at`` is PostgreSQL's binary timestamptz (microseconds since 2000), made a
        datetime in ``tz`` (the connection's time zone) when it is first read.
        """
        self._event_id = event_id
        self.stream_id = stream_id
        self.stream_version = stream_version
        self.partition = partition
        self.position = position
        self.event_type = event_type
        self.schema_version = schema_version
        self._data = data
        self._metadata_text = metadata
        self._metadata: dict[str, Any] | None = None
        self._event: Event | None = None
        self._recorded_at = recorded_at
        self._timezone = tz

    @property
    def event_id(self) -> UUID:
        """The event's id."""
        return UUID(self._id())

    def _id(self) -> str:
        """The event id's text."""
        return self._event_id or self._data[len(_DOCUMENT_HEAD) : _ID_END]

    def _payload(self) -> str:
        """The stored payload's JSON text."""
        if self._event_id:
            return self._data
        return "{" + self._data[_ID_END + 2 :] if len(self._data) > _ID_END + 2 else "{}"

    @property
    def recorded_at(self) -> datetime:
        """When the event was stored (the database's clock), in the connection's time zone."""
        value = self._recorded_at
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
            self._metadata = json.loads(self._metadata_text)
        return self._metadata

    def __repr__(self) -> str:
        return (
            f"<RecordedEvent {self.event_type} {self.stream_id!r} v{self.stream_version}"
            f" @{self.partition}:{self.position}>"
        )


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
        return [RecordedEvent(*row) for row in rows]


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
        elif record.schema_version == version:
            try:  # an ``event_pages`` row: the id is spliced into the document already
                record._event = validate(record._data)
            except (ValueError, RecursionError):
                _ = record.event  # decode_event raises it again, naming the event
        else:
            _ = record.event  # upcast by decode_event (or its error, naming the event)
        yield record


def check_stream_id(stream_id: object, what: str = "stream id") -> str:
    """Stream ids (and partition keys) are UTF-8 text of 1 to 500 characters, without NUL."""
    return check_name(stream_id, what, max_length=MAX_STREAM_ID_LENGTH, blank=True)


def check_expected(expected: int | ExpectedVersion) -> int:
    """``expected_version``: a version from 0 to the bigint maximum, ``NO_STREAM`` or ``ANY``.

    Anything else is a ``ValueError`` that names the three choices.
    """
    if isinstance(expected, ExpectedVersion):
        return expected.value
    try:
        return check_int(expected, "expected_version", low=0)
    except (TypeError, ValueError):
        raise ValueError(
            f"expected_version must be an int from 0 to {BIGINT_MAX}, NO_STREAM or ANY,"
            f" got {expected!r}"
        ) from None


def check_version(version: object, what: str = "after_version") -> int:
    """A stream version to read after: an int from 0 to the bigint maximum."""
    return check_int(version, what, low=0)


def check_partitions(partitions: object) -> int:
    """``partitions`` if it is a valid partition count (1 to MAX_PARTITIONS)."""
    return check_int(partitions, "partitions", low=1, high=MAX_PARTITIONS)


def check_partition(partition: object, partitions: int) -> int:
    """``partition`` if it exists in a log of ``partitions`` partitions."""
    try:
        return check_int(partition, "partition", low=0, high=partitions - 1)
    except ValueError:
        raise ValueError(
            f"partition {partition} does not exist: this log has partitions 0..{partitions - 1}"
        ) from None


def check_range(after: object, limit: object, *, limit_name: str = "limit") -> None:
    """Paging arguments (``after`` and ``limit``, or ``batch``): ints from 0 to the bigint
    maximum, named ``after`` and ``limit_name`` in errors."""
    check_int(after, "after", low=0)
    check_int(limit, limit_name, low=0)
