"""Staged appends: the batches a transaction writes at commit."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg.errors

from eventsource._context import with_context
from eventsource._errors import (
    VERSION_CONFLICT,
    ConcurrencyError,
    EventSourceError,
    json_detail,
)
from eventsource._events import Event, encode_event
from eventsource._json import (
    check_json_depth,
    check_json_text,
    object_depth,
    too_deep,
)
from eventsource.db import Direct, array_literal, text_array
from eventsource.store._queries import Queries
from eventsource.store._types import (
    ANY,
    NO_STREAM,
    AppendResult,
    ExpectedVersion,
    PendingAppend,
    check_expected,
    check_stream_id,
    partition_for,
)

# Joins JSON texts for the append_group statement: JSON escapes every control character, so
# no JSON text holds one.
SEPARATOR = "\x1e"


def _encode(event: Event) -> str:
    """The stored payload of an event: JSON that jsonb accepts and reads can decode."""
    return check_json_text(encode_event(event), f"event {event.event_type}")


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
        check_json_text(text, "metadata")
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

    @classmethod
    def joined(cls, parts: Sequence[StagedAppends]) -> StagedAppends:
        """The appends of ``parts`` (no stream in two of them) as one flush; resolving it fills
        the pending results of every part."""
        joined = cls()
        for part in parts:
            joined._streams.update(part._streams)
        return joined

    def stream_ids(self) -> Iterable[str]:
        """The streams staged."""
        return self._streams.keys()

    def pending(self) -> list[PendingAppend]:
        """The pending results of every staged append, in staging order."""
        return [p for s in self._streams.values() for p, _ in s.pending]

    def add(
        self,
        stream_id: str,
        events: Sequence[Event],
        expected: int | ExpectedVersion,
        metadata: Mapping[str, Any] | None,
        partition_key: str | None,
    ) -> PendingAppend:
        """Stage ``events`` for ``stream_id``, checking the expected version against what is
        staged already."""
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

    def group_params(self, partitions: int, *, all_or_none: bool) -> dict[str, Any]:
        """The parameters of the ``append_group`` statement for everything staged (see it):
        array literals, the event types once each, texts joined by ``SEPARATOR``."""
        streams = list(self._streams.values())
        events = [e for s in streams for e in s.events]
        types: dict[str, int] = {}
        for event in events:
            types.setdefault(event.event_type, len(types) + 1)
        metadata = [m for s in streams for m in s.metadata]
        return {
            "stream_ids": text_array(s.stream_id for s in streams),
            "partitions": array_literal(
                partition_for(s.partition_key, partitions) for s in streams
            ),
            "expected": array_literal(s.expected for s in streams),
            "counts": array_literal(len(s.events) for s in streams),
            "event_ids": array_literal(e.event_id.hex for e in events),  # 32 hex digits
            "types": text_array(types),
            "type_index": array_literal(types[e.event_type] for e in events),
            "schema_versions": array_literal(e.schema_version for e in events),
            "data": SEPARATOR.join(d for s in streams for d in s.data),
            "metadata": ""
            if metadata.count("{}") == len(metadata)
            else SEPARATOR.join("" if m == "{}" else m for m in metadata),
            "all_or_none": all_or_none,
        }

    def written(
        self, by_stream: Mapping[str, Sequence[Any]], schema: str
    ) -> list[AppendResult] | None:
        """Fill the pending appends from ``append_group``'s rows (by stream id) and return
        ``resolve``'s results, if they hold every stream staged (else change nothing: None)."""
        if not all(stream_id in by_stream for stream_id in self._streams):
            return None
        return self._fill(by_stream, False, schema)

    def single(
        self, partitions: int, queries: Queries
    ) -> tuple[str | Direct, dict[str, Any]] | None:
        """For exactly one staged stream: the fast statement and its parameters."""
        if len(self._streams) != 1:
            return None
        (staged,) = self._streams.values()
        events = staged.events
        expected = staged.expected
        one = len(events) == 1
        # The claim on the stream: any version, a new stream, or the expected version.
        if expected == ANY.value:
            claim = "any"
        elif expected in (0, NO_STREAM.value):
            claim = "new"
        else:
            claim = "at"
        sql: str | Direct = (
            queries.direct[f"append_one_event_{claim}"]
            if one
            else getattr(queries, f"append_one_{claim}")
        )
        params = {
            "stream_id": staged.stream_id,
            "partition": partition_for(staged.partition_key, partitions),
            "expected": expected,
            "n": len(events),
            "first_id": events[0].event_id,
        }
        if one:
            params["type"] = events[0].event_type
            params["schema_version"] = events[0].schema_version
            params["data"] = staged.data[0]
            params["metadata"] = staged.metadata[0]
            return sql, params
        params["event_ids"] = [e.event_id for e in events]
        params["types"] = [e.event_type for e in events]
        params["schema_versions"] = [e.schema_version for e in events]
        params["data"] = staged.data
        params["metadata"] = staged.metadata
        return sql, params

    def resolve(self, rows: Sequence[Sequence[Any]], schema: str) -> list[AppendResult]:
        """Fill every pending append from the rows written (one per stream, with its status),
        in staging order; ``schema`` is the store's (the results' position tokens name it)."""
        return self._fill({row[0]: row for row in rows}, True, schema)

    def _fill(
        self, by_stream: Mapping[str, Sequence[Any]], status: bool, schema: str
    ) -> list[AppendResult]:
        """``resolve`` from rows by stream id: (stream id, [status,] version, partition,
        position), the status there with ``status`` (else none is a duplicate)."""
        results = []
        for stream_id, staged in self._streams.items():
            row = by_stream[stream_id]
            version, partition, position = row[-3:]
            duplicate = status and row[1] == "duplicate"
            result = AppendResult(stream_id, version, partition, position, duplicate, schema)
            pending = staged.pending
            if len(pending) == 1:  # one append of the stream: its result is the stream's
                pending[0][0]._result = result
            else:  # a stream's events are consecutive; earlier appends end before later ones
                remaining = len(staged.events)
                for append, count in pending:
                    remaining -= count
                    at = (version - remaining, partition, position - remaining)
                    append._result = AppendResult(stream_id, *at, duplicate, schema)
            results.append(result)
        self._streams.clear()
        return results


Plan = Generator[tuple[str | Direct, dict[str, Any]], list[tuple[Any, ...]], list[AppendResult]]


def for_the_plan(exc: psycopg.Error) -> bool:
    """Whether an append plan is thrown ``exc`` when a statement it yielded raises it (the
    plan answers some of them): a unique violation, or the append function's version conflict
    (an SQLSTATE of its own, which psycopg gives a generic class)."""
    return isinstance(exc, psycopg.errors.UniqueViolation) or exc.sqlstate == VERSION_CONFLICT


def _raced(exc: psycopg.Error) -> bool:
    """Whether ``exc`` is a version conflict that the append function raised because a writer
    its locks did not hold back stored a version first (called again, it sees that writer)."""
    return exc.sqlstate == VERSION_CONFLICT and json_detail(exc).get("raced") is True


def append_plan(
    staged: StagedAppends, queries: Queries, partitions: int, *, autocommit: bool
) -> Plan:
    """The statements that write ``staged``, as a generator the sync and async stores drive.

    It yields (sql, params) and is sent back the rows, or thrown the error of a statement
    that ``for_the_plan`` names. ``autocommit``: each statement commits on its own. Then one
    stream takes the one-statement path, and when that writes nothing (a conflict, a retry, or
    a racing writer that made its insert fail on the unique key) the append function finds
    out what happened. In a transaction, and for several streams, the append function does it
    all: it waits for racing writers on the partition heads, then reads the versions. It alone
    decides a version conflict (SQLSTATE ES409, which the store translates); one that says a
    writer creating a stream under another partition key got there first ("raced") is tried
    once more in autocommit, where nothing else of the transaction is lost.
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
            return staged.resolve(
                [(params["stream_id"], "ok", version, partition, position)], queries.schema
            )
    if autocommit:
        # Several streams, all claims checked and written by one plain statement; if one does
        # not hold (or a racing writer made the insert fail), nothing is written and the
        # append function finds out what happened.
        try:
            rows = yield (
                queries.direct["append_group"],
                staged.group_params(partitions, all_or_none=True),
            )
        except psycopg.errors.UniqueViolation:
            rows = []
        results = staged.written({row[0]: row for row in rows}, queries.schema)
        if results is not None:
            return results
    params = staged.params(partitions)
    try:
        rows = yield queries.append, params
    except psycopg.Error as exc:
        # A writer creating one of these streams under another partition key got there first.
        # Alone, nothing was written: once more, the function sees that stream. Otherwise the
        # error (a version conflict the store translates, say) is the caller's.
        if not (autocommit and _raced(exc)):
            raise
        rows = yield queries.append, params
    return staged.resolve(rows, queries.schema)


OnCommit = Callable[[], None]


class TransactionCore:
    """What the sync and async transactions share, with no I/O: the appends staged, the
    statements to run after them, the commit callbacks, and whether the block has ended."""

    _block: ClassVar[str]  # the block it belongs to, named when it is used after its end

    def __init__(self, store: Any) -> None:
        self.store = store
        self._staged = StagedAppends()
        self._after_flush: list[tuple[str, dict[str, Any]]] = []
        self._on_commit: list[OnCommit] = []
        self._written: list[PendingAppend] = []
        self._saved: dict[int, tuple[object, int]] = {}  # aggregates staged by repositories
        self._ended = False

    def _check_open(self) -> None:
        if self._ended:
            raise EventSourceError(
                f"this transaction has ended: use it inside its `{self._block}` block"
            )

    def on_commit(self, callback: OnCommit) -> None:
        """Call ``callback`` after the transaction has committed."""
        self._check_open()
        self._on_commit.append(callback)

    def _rolled_back(self) -> None:
        for pending in self._written + self._staged.pending():
            pending._rolled_back = True
