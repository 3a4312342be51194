"""The store's value types and the checks of their arguments."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Generic, TypeVar, overload

from eventsource._checks import (
    BIGINT_MAX,
    MAX_STREAM_ID_LENGTH,
    check_int,
    check_name,
)
from eventsource._errors import (
    EventSourceError,
)
from eventsource._versions import ANY, NO_STREAM, ExpectedVersion
from eventsource.store._token import make_token

__all__ = [
    "ANY",
    "NO_STREAM",
    "AppendResult",
    "ExpectedVersion",
    "PendingAppend",
    "partition_for",
]

T = TypeVar("T")

MAX_PARTITIONS = 4096


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
