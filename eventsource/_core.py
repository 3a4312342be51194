"""The store's shared core: value types, input checks, batch building and error translation.

Everything here is free of I/O, so the sync ``EventStore`` and the async ``AsyncEventStore`` are
thin twins over one source of truth: they differ only in how a statement is awaited.
"""

from __future__ import annotations

import enum
import gc
import json
import re
import zlib
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg.conninfo
import psycopg.errors
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from ._checks import (
    BIGINT_MAX,
    check_int,
    check_json_depth,
    check_name,
    object_depth,
    too_deep,
)
from ._context import with_context
from ._errors import (
    ConcurrencyError,
    DatabaseUnavailable,
    DuplicateEventId,
    EventSourceError,
    SchemaNotReady,
)
from ._events import Event, EventDecodeError, decode_event, encode_event, is_registered
from ._queries import Queries
from ._schema import MAX_STREAM_ID_LENGTH

__all__ = [
    "ANY",
    "NO_STREAM",
    "AppendResult",
    "ExpectedVersion",
    "PendingAppend",
    "RecordedEvent",
    "partition_for",
]

MAX_PARTITIONS = 4096


class ExpectedVersion(enum.Enum):
    """The non-numeric expectations of ``append``: ``NO_STREAM`` and ``ANY``."""

    NO_STREAM = -1
    ANY = -2

    def __repr__(self) -> str:
        return self.name


NO_STREAM = ExpectedVersion.NO_STREAM
ANY = ExpectedVersion.ANY


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
        return self._result is not None

    @property
    def result(self) -> AppendResult:
        if self._rolled_back:
            raise EventSourceError(
                f"the append to {self.stream_id!r} was rolled back with its transaction:"
                " nothing was written"
            )
        if self._result is None:
            raise EventSourceError(
                f"the append to {self.stream_id!r} is not written yet: read its result after"
                " the transaction commits (or after tx.flush())"
            )
        return self._result

    @property
    def stream_version(self) -> int:
        return self.result.stream_version

    @property
    def partition(self) -> int:
        return self.result.partition

    @property
    def position(self) -> int:
        return self.result.position

    @property
    def duplicate(self) -> bool:
        return self.result.duplicate

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
        "event_type",
        "partition",
        "position",
        "recorded_at",
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
        recorded_at: datetime,
    ) -> None:
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
        self.recorded_at = recorded_at

    @property
    def event_id(self) -> UUID:
        return UUID(self._event_id)

    @property
    def event(self) -> Event:
        """The decoded (and upcast) event; ``UnknownEventType`` if its class is not loaded.

        ``EventDecodeError`` (naming the type, stream and version) if the stored payload does
        not fit its class, ``UpcastError`` if it cannot be upgraded to it.
        """
        if self._event is None:
            try:
                self._event = decode_event(
                    self.event_type, self.schema_version, self._data, self._event_id
                )
            except EventDecodeError as exc:
                raise exc.at(self.stream_id, self.stream_version) from exc.__cause__
        return self._event

    @property
    def data(self) -> dict[str, Any]:
        """The stored payload as a dict, without decoding it to its model."""
        result: dict[str, Any] = json.loads(self._data)
        return result

    @property
    def metadata(self) -> dict[str, Any]:
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


def records(rows: Sequence[Sequence[Any]], *, decode: bool = False) -> list[RecordedEvent]:
    """Records from result rows; with ``decode``, events of loaded types are decoded now.

    The collector is paused while the batch is built (this halves the cost of a replay).
    """
    with paused_gc():
        result = [RecordedEvent(*row) for row in rows]
        if decode:
            try:
                for record in result:
                    if is_registered(record.event_type):
                        record._event = decode_event(
                            record.event_type,
                            record.schema_version,
                            record._data,
                            record._event_id,
                        )
            except EventDecodeError as exc:
                raise exc.at(record.stream_id, record.stream_version) from exc.__cause__
        return result


def check_stream_id(stream_id: object, what: str = "stream id") -> str:
    """Stream ids (and partition keys) are UTF-8 text of 1 to 500 characters, without NUL."""
    return check_name(stream_id, what, max_length=MAX_STREAM_ID_LENGTH, blank=True)


def check_expected(expected: int | ExpectedVersion) -> int:
    """``expected_version``: a version from 0 to the bigint maximum, ``NO_STREAM`` or ``ANY``."""
    if isinstance(expected, ExpectedVersion):
        return expected.value
    if (
        isinstance(expected, bool)
        or not isinstance(expected, int)
        or not 0 <= expected <= BIGINT_MAX
    ):
        raise ValueError(
            f"expected_version must be an int from 0 to {BIGINT_MAX}, NO_STREAM or ANY,"
            f" got {expected!r}"
        )
    return expected


def check_version(version: object, what: str = "after_version") -> int:
    """A stream version to read after: an int from 0 to the bigint maximum."""
    return check_int(version, what, low=0, high=BIGINT_MAX)


def check_partitions(partitions: object) -> int:
    if (
        isinstance(partitions, bool)
        or not isinstance(partitions, int)
        or not 1 <= partitions <= MAX_PARTITIONS
    ):
        raise ValueError(
            f"partitions must be an int from 1 to {MAX_PARTITIONS}, got {partitions!r}"
        )
    return partitions


def check_partition(partition: object, partitions: int) -> int:
    if isinstance(partition, bool) or not isinstance(partition, int):
        raise TypeError(f"partition must be an int, got {partition!r}")
    if not 0 <= partition < partitions:
        raise ValueError(
            f"partition {partition} does not exist: this log has partitions 0..{partitions - 1}"
        )
    return partition


# A JSON escape of U+0000: "\u0000" not itself preceded by an escaping backslash.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def check_range(after: object, limit: object, *, limit_name: str = "limit") -> None:
    """Paging arguments (``after`` and ``limit``, or ``batch``): ints from 0 to the bigint
    maximum, named ``after`` and ``limit_name`` in errors."""
    check_int(after, "after", low=0, high=BIGINT_MAX)
    check_int(limit, limit_name, low=0, high=BIGINT_MAX)


def _json_text(value: str, what: str) -> str:
    """Check encoded JSON for what PostgreSQL's jsonb refuses, before anything is sent."""
    if "\\u0000" in value and _NUL_ESCAPE.search(value):
        raise ValueError(f"{what} contains a NUL character (U+0000), which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{what} contains a lone surrogate character, which is not valid UTF-8"
        ) from None
    return value


def _encode(event: Event) -> str:
    """The stored payload of an event: JSON that jsonb accepts and reads can decode."""
    return _json_text(encode_event(event), f"event {event.event_type}")


def encode_metadata(metadata: Mapping[str, Any] | None) -> str:
    """The stored metadata of an append (the context's ids added): JSON that reads can decode.

    ``TypeError`` for values JSON cannot hold; ``ValueError`` for NaN, NUL, lone surrogates
    and metadata nested deeper than reads can decode.
    """
    meta = with_context(metadata)
    if meta is None:
        return "{}"
    try:
        text = json.dumps(meta, ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise ValueError(too_deep("metadata", object_depth(meta))) from None
    except TypeError as exc:
        raise TypeError(f"metadata must be JSON-serializable: {exc}") from None
    except ValueError as exc:
        if "Circular reference" in str(exc):
            raise ValueError(too_deep("metadata", None)) from None
        raise ValueError(f"metadata cannot be stored as JSON: {exc}") from None
    try:
        _json_text(text, "metadata")
    except ValueError as exc:
        raise ValueError(f"metadata cannot be stored as JSON: {exc}") from None
    return check_json_depth(text, "metadata")


@dataclass
class _StagedStream:
    stream_id: str
    partition_key: str
    expected: int
    events: list[Event]
    data: list[str]
    metadata: list[str]
    pending: list[tuple[PendingAppend, int]]  # each staged append and its event count


class StagedAppends:
    """Appends gathered for one flush: one row per stream, in the order first appended.

    Several appends to one stream in a transaction are merged when their expected versions
    chain (each expects where the previous one ends); otherwise the later one conflicts at once.
    """

    def __init__(self) -> None:
        self._streams: dict[str, _StagedStream] = {}

    def __bool__(self) -> bool:
        return bool(self._streams)

    def pending(self) -> list[PendingAppend]:
        return [p for s in self._streams.values() for p, _ in s.pending]

    def add(
        self,
        stream_id: str,
        events: Sequence[Event],
        expected: int | ExpectedVersion,
        metadata: Mapping[str, Any] | None,
        partition_key: str | None,
    ) -> PendingAppend:
        stream_id = check_stream_id(stream_id)
        expected_value = check_expected(expected)
        events = list(events)
        if not events:
            raise ValueError(f"append to {stream_id!r} has no events")
        for event in events:
            if not isinstance(event, Event):
                raise TypeError(f"append takes Event instances, got {type(event).__name__}")
        if partition_key is not None:
            check_stream_id(partition_key, "partition_key")
        meta_text = encode_metadata(metadata)
        data = [_encode(event) for event in events]
        pending = PendingAppend(stream_id, len(events))
        staged = self._streams.get(stream_id)
        if staged is None:
            self._streams[stream_id] = _StagedStream(
                stream_id,
                partition_key or stream_id,
                expected_value,
                events,
                data,
                [meta_text] * len(events),
                [(pending, len(events))],
            )
            return pending
        # A later append to a stream already staged in this transaction.
        so_far = len(staged.events)
        if expected_value != ANY.value:
            if staged.expected == ANY.value:
                raise ValueError(
                    f"stream {stream_id!r} was appended to with ANY earlier in this transaction,"
                    " so its version is not known until commit: append with ANY again, or"
                    " flush the transaction first"
                )
            base = 0 if staged.expected == NO_STREAM.value else staged.expected
            if expected_value != base + so_far:
                raise ConcurrencyError(
                    stream_id,
                    expected if isinstance(expected, ExpectedVersion) else expected_value,
                    base + so_far,
                )
        staged.events.extend(events)
        staged.data.extend(data)
        staged.metadata.extend([meta_text] * len(events))
        staged.pending.append((pending, len(events)))
        return pending

    def params(self, partitions: int) -> dict[str, list[Any]]:
        """The arguments of the append function for everything staged."""
        streams = list(self._streams.values())
        events = [e for s in streams for e in s.events]
        return {
            "stream_ids": [s.stream_id for s in streams],
            "partitions": [partition_for(s.partition_key, partitions) for s in streams],
            "expected": [s.expected for s in streams],
            "counts": [len(s.events) for s in streams],
            "event_ids": [e.event_id for e in events],
            "types": [e.event_type for e in events],
            "schema_versions": [e.schema_version for e in events],
            "data": [d for s in streams for d in s.data],
            "metadata": [m for s in streams for m in s.metadata],
        }

    def single(self, partitions: int, queries: Queries) -> tuple[str, dict[str, Any]] | None:
        """For exactly one staged stream: the fast statement and its parameters."""
        if len(self._streams) != 1:
            return None
        (staged,) = self._streams.values()
        events = staged.events
        expected = staged.expected
        kind = (
            "any" if expected == ANY.value else "new" if expected in (0, NO_STREAM.value) else "at"
        )
        params = {
            "stream_id": staged.stream_id,
            "partition": partition_for(staged.partition_key, partitions),
            "expected": expected,
            "n": len(events),
            "first_id": events[0].event_id,
        }
        if len(events) == 1:
            params["type"] = events[0].event_type
            params["schema_version"] = events[0].schema_version
            params["data"] = staged.data[0]
            params["metadata"] = staged.metadata[0]
            return queries.append_one_event[kind], params
        params["event_ids"] = [e.event_id for e in events]
        params["types"] = [e.event_type for e in events]
        params["schema_versions"] = [e.schema_version for e in events]
        params["data"] = staged.data
        params["metadata"] = staged.metadata
        return queries.append_one[kind], params

    def conflict(self, exc: psycopg.errors.UniqueViolation) -> Exception:
        """The error for an insert that hit a stored version of a stream: ``ConcurrencyError``
        (other unique violations are left to ``translate``).

        The append function reads versions under the heads' locks, so this happens only when
        it could not see the other writer: one creating the stream at the same moment under
        another partition key, or a transaction whose snapshot is older than the stored
        version (REPEATABLE READ). ``actual`` is then the version that clashed: the stream is
        at least there.
        """
        if not _version_clash(exc):
            return exc
        taken = _taken_version(exc.diag.message_detail or "")
        if taken is None and len(self._streams) == 1:
            taken = (next(iter(self._streams)), None)
        staged = self._streams.get(taken[0]) if taken else None
        if taken is None or staged is None:
            return exc
        stream_id, version = taken
        expected = staged.expected
        return ConcurrencyError(
            stream_id,
            ExpectedVersion(expected) if expected < 0 else expected,
            version if version is not None else max(expected, 0) + 1,
        )

    def resolve(self, rows: Sequence[Sequence[Any]]) -> list[AppendResult]:
        """Fill every pending append from the rows written (one per stream), in staging order."""
        by_stream = {row[0]: row for row in rows}
        results = []
        for stream_id, staged in self._streams.items():
            _, status, version, partition, position = by_stream[stream_id]
            duplicate = status == "duplicate"
            # A stream's events are consecutive; earlier appends end before later ones.
            remaining = len(staged.events)
            for pending, count in staged.pending:
                remaining -= count
                pending._result = AppendResult(
                    stream_id, version - remaining, partition, position - remaining, duplicate
                )
            results.append(AppendResult(stream_id, version, partition, position, duplicate))
        self._streams.clear()
        return results


Plan = Generator[tuple[str, dict[str, Any]], list[tuple[Any, ...]], list[AppendResult]]


def _version_clash(exc: psycopg.errors.UniqueViolation) -> bool:
    """Whether the insert hit a version of a stream that is already stored."""
    return getattr(exc.diag, "constraint_name", None) == "events_stream_version_key"


def _taken_version(detail: str) -> tuple[str, int | None] | None:
    """(stream id, version) from the detail of a violated (stream_id, stream_version) key."""
    prefix, suffix = "Key (stream_id, stream_version)=(", ") already exists."
    if not (detail.startswith(prefix) and detail.endswith(suffix)):
        return None
    stream_id, _, version = detail[len(prefix) : -len(suffix)].rpartition(", ")
    return (stream_id, int(version)) if version.isdigit() else None


def append_plan(
    staged: StagedAppends, queries: Queries, partitions: int, *, autocommit: bool
) -> Plan:
    """The statements that write ``staged``, as a generator the sync and async stores drive.

    It yields (sql, params) and is sent back the rows, or thrown the unique violation of a
    statement. ``autocommit``: each statement commits on its own. Then one stream takes the
    one-statement path, and when that writes nothing (a conflict, a retry, or a racing writer
    that made its insert fail) the append function finds out what happened. In a transaction,
    and for several streams, the append function does it all: it waits for racing writers on
    the partition heads, then reads the versions.
    """
    single = staged.single(partitions, queries) if autocommit else None
    if single is not None:
        sql, params = single
        try:
            rows = yield sql, params
        except psycopg.errors.UniqueViolation:
            rows = []  # it wrote nothing
        if rows:
            ((version, partition, position),) = rows
            return staged.resolve([(params["stream_id"], "ok", version, partition, position)])
    params = staged.params(partitions)
    for attempt in (1, 2):
        try:
            rows = yield queries.append, params
            break
        except psycopg.errors.UniqueViolation as exc:
            # A writer creating one of these streams under another partition key got there
            # first. Alone, nothing was written: once more, the function sees that stream.
            if autocommit and _version_clash(exc) and attempt == 1:
                continue
            error = staged.conflict(exc)
            if error is exc:
                raise
            raise error from exc
    return staged.resolve(rows)


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<unparseable database URL>"


# TCP keepalives unless the URL sets its own: a connection to a server that vanished (a
# network partition, a host that died) fails within about 25 s instead of the kernel's 2 h.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def conninfo(url: URL) -> str:
    """A libpq connection string (``key=value`` form) for a SQLAlchemy URL.

    Query parameters pass through as they were decoded from the URL (``options=-c%20x%3D1``
    becomes ``options='-c x=1'``); several ``host`` values are joined with commas, as libpq
    expects. TCP keepalives are on unless the URL says otherwise.
    """
    params: dict[str, Any] = dict(KEEPALIVES)
    for key, value in url.query.items():
        params[key] = ",".join(value) if isinstance(value, tuple) else value
    if url.host:
        params["host"] = url.host
    if url.port:
        params["port"] = url.port
    if url.username:
        params["user"] = url.username
    if url.password is not None:
        params["password"] = url.password
    if url.database:
        params["dbname"] = url.database
    return psycopg.conninfo.make_conninfo("", **params)


def describe_target(url: URL) -> str:
    host = url.host or url.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = host[0]
    port = f":{url.port}" if url.port else ""
    return f"{host}{port}/{url.database or ''}"


# Server states that mean the connection, not the statement, failed: the server is shutting
# down or starting up, or has no connection slot left.
_OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_outage(exc: BaseException | None) -> bool:
    """Whether ``exc`` means the database could not be reached (an outage to wait out).

    Connection-class failures only: SQLSTATE class 08, 57P01-57P03 (shutdown, crash,
    starting up), no free connection slot, a closed or broken connection, a connection
    attempt that failed, ``DatabaseUnavailable``. Everything else (timeouts, deadlocks,
    constraint violations, a handler's own errors) is an error of the work in hand.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DatabaseUnavailable | psycopg.InterfaceError):
            return True
        if isinstance(exc, sa_exc.DBAPIError):
            if exc.connection_invalidated:
                return True
            exc = exc.orig
            continue
        if isinstance(exc, psycopg.OperationalError):
            state = exc.sqlstate
            # No SQLSTATE: libpq itself failed (refused, reset, closed by the server).
            return state is None or state.startswith("08") or state in _OUTAGE_STATES
        if isinstance(exc, psycopg.Error):
            return False
        exc = exc.__cause__
    return False


@contextmanager
def translate_errors(url: URL, schema: str) -> Iterator[None]:
    """Turn driver errors into eventsource errors, at the one storage boundary."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        raise translate(exc.orig, url, schema, invalidated=exc.connection_invalidated) from exc
    except psycopg.Error as exc:  # statements run on the driver connection directly
        raise translate(exc, url, schema) from exc


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none), for logs."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def translate(  # noqa: PLR0911 - one return per kind of driver error
    orig: BaseException | None, url: URL, schema: str, *, invalidated: bool = False
) -> Exception:
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate == "ES409":  # raised by append_events on a version conflict
        detail = json.loads(orig.diag.message_detail or "{}")  # type: ignore[union-attr]
        expected = detail.get("expected")
        return ConcurrencyError(
            detail.get("stream_id"),
            ExpectedVersion(expected) if expected < 0 else expected,
            detail.get("actual"),
        )
    if sqlstate == "ES422":
        detail = json.loads(orig.diag.message_detail or "{}")  # type: ignore[union-attr]
        return DuplicateEventId(
            detail.get("stream_id"),
            "part of its event ids are already stored (in it or in another stream), part not",
        )
    if isinstance(orig, psycopg.errors.UniqueViolation):
        constraint = getattr(orig.diag, "constraint_name", None) or ""
        if constraint == "events_event_id_key":
            return DuplicateEventId(
                None, "one of its event ids is already stored (event ids are unique across the log)"
            )
        return EventSourceError(f"unique constraint {constraint} violated: {orig}")
    if isinstance(
        orig,
        psycopg.errors.UndefinedTable
        | psycopg.errors.UndefinedFunction
        | psycopg.errors.InvalidSchemaName,
    ):
        return SchemaNotReady(schema, first_line(orig))
    if isinstance(orig, psycopg.errors.CheckViolation):
        return ValueError(f"rejected by the database: {first_line(orig)}")
    if isinstance(orig, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return EventSourceError(
            f"the statement was cancelled (a statement or lock timeout?): {first_line(orig)}"
        )
    if isinstance(orig, psycopg.errors.SerializationFailure):
        return EventSourceError(
            "the transaction could not be serialized with a concurrent one and was rolled back;"
            " retry it"
        )
    if isinstance(orig, psycopg.errors.DeadlockDetected):
        return EventSourceError(
            "the transaction deadlocked with another one and was rolled back; retry it"
        )
    if is_outage(orig) or invalidated:
        lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
        reason = lines[0] if lines else type(orig).__name__
        return DatabaseUnavailable(describe_target(url), reason)
    return EventSourceError(f"database error: {str(orig).splitlines()[0] if str(orig) else orig!r}")


OnCommit = Callable[[], None]
