"""The store's I/O-free core: partitioning, input checks and staging of appends (no database)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy.engine import make_url

from eventsource import (
    ANY,
    NO_STREAM,
    AppendResult,
    ConcurrencyError,
    EventSourceError,
    ExpectedVersion,
    PendingAppend,
    RecordedEvent,
    SchemaNotReady,
    correlation,
    partition_for,
)
from eventsource._errors import (
    DeadlockDetected,
    RetryableError,
    SerializationFailure,
    StatementCancelled,
    translate,
)
from eventsource.store import (
    MAX_PARTITIONS,
    StagedAppends,
    check_expected,
    check_partition,
    check_partitions,
    check_stream_id,
)
from tests.domain import Deposited, Opened

# -- partition_for ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "partitions", "expected"),
    [
        ("", 16, 0),  # crc32(b"") == 0
        ("a", 16, 3),  # crc32(b"a") == 0xE8B7BE43
        ("abc", 16, 2),  # crc32(b"abc") == 0x352441C2
        ("123456789", 16, 6),  # the CRC-32 check value 0xCBF43926
        ("123456789", 4, 2),
        ("é", 16, 14),  # UTF-8 bytes c3 a9, not latin-1
        ("123456789", 1, 0),
    ],
)
def test_partition_for_is_crc32_of_utf8_mod_n(key: str, partitions: int, expected: int) -> None:
    """partition_for is CRC-32 (IEEE) of the key's UTF-8 bytes modulo the partition count."""
    assert partition_for(key, partitions) == expected


def test_partition_for_is_stable_and_in_range() -> None:
    """The same key always maps to the same partition, within 0..n-1, for every n."""
    keys = [f"stream-{i}" for i in range(300)] + ["😀", "a" * 500, "'; DROP TABLE x; --"]
    for n in (1, 2, 4, 7, 16, MAX_PARTITIONS):
        first = [partition_for(k, n) for k in keys]
        assert first == [partition_for(k, n) for k in keys]
        assert all(0 <= p < n for p in first)
    assert len({partition_for(k, 16) for k in keys}) == 16  # spreads over every partition


# -- input checks -------------------------------------------------------------------------


def test_check_stream_id_accepts_up_to_500_characters() -> None:
    """Stream ids of 1..500 characters (any unicode but NUL) are accepted as given."""
    for ok in ["a", "x" * 500, "😀" * 500, "'; DROP TABLE x; --", ' "quoted" ']:
        assert check_stream_id(ok) == ok


@pytest.mark.parametrize(
    ("bad", "match"),
    [("", "empty"), ("x" * 501, "501 characters"), ("a\x00b", "NUL")],
)
def test_check_stream_id_rejects_bad_text(bad: str, match: str) -> None:
    """Empty, over-long (501) and NUL-containing stream ids are ValueErrors."""
    with pytest.raises(ValueError, match=match):
        check_stream_id(bad)


@pytest.mark.parametrize("bad", [None, 1, b"bytes", ["a"]])
def test_check_stream_id_rejects_non_text(bad: object) -> None:
    """A stream id that is not a str is a TypeError naming the type."""
    with pytest.raises(TypeError, match=type(bad).__name__):
        check_stream_id(bad)


def test_check_expected_values() -> None:
    """Exact versions pass through; NO_STREAM and ANY become their sentinel values."""
    assert check_expected(0) == 0
    assert check_expected(7) == 7
    assert check_expected(NO_STREAM) == -1
    assert check_expected(ANY) == -2
    assert ExpectedVersion.NO_STREAM is NO_STREAM
    assert repr(ANY) == "ANY"


@pytest.mark.parametrize("bad", [-1, -2, True, 1.0, "1", None])
def test_check_expected_rejects_other_values(bad: object) -> None:
    """Negative ints, bools, floats and strings are not expected versions."""
    with pytest.raises(ValueError, match="expected_version"):
        check_expected(bad)  # type: ignore[arg-type]


def test_check_partitions_range() -> None:
    """Partition counts are ints from 1 to 4096."""
    assert check_partitions(1) == 1
    assert check_partitions(MAX_PARTITIONS) == MAX_PARTITIONS
    for bad in (0, -1, MAX_PARTITIONS + 1):
        with pytest.raises(ValueError, match=f"partitions must be from 1 to {MAX_PARTITIONS}"):
            check_partitions(bad)
    for bad in (True, 2.0, "4"):
        with pytest.raises(TypeError, match="partitions must be an int"):
            check_partitions(bad)


def test_check_partition_range() -> None:
    """A partition must be an int in 0..partitions-1."""
    assert check_partition(3, 4) == 3
    with pytest.raises(ValueError, match=r"partition 4 does not exist.*0\.\.3"):
        check_partition(4, 4)
    with pytest.raises(ValueError, match="does not exist"):
        check_partition(-1, 4)
    with pytest.raises(TypeError, match=r"^partition must be an int, got str: '1'$"):
        check_partition("1", 4)
    with pytest.raises(TypeError, match=r"^partition must be an int, got bool: True$"):
        check_partition(True, 4)


# -- StagedAppends ------------------------------------------------------------------------


def test_staged_params_flatten_streams_in_order() -> None:
    """params() gives one row per stream (first-append order) and the events flattened."""
    staged = StagedAppends()
    e1, e2, e3 = Opened(owner="a"), Deposited(amount=1), Opened(owner="b")
    staged.add("s-1", [e1, e2], NO_STREAM, {"k": "v"}, None)
    staged.add("s-2", [e3], 4, None, "customer-42")
    params = staged.params(16)
    assert params["stream_ids"] == ["s-1", "s-2"]
    assert params["partitions"] == [partition_for("s-1", 16), partition_for("customer-42", 16)]
    assert params["expected"] == [-1, 4]
    assert params["counts"] == [2, 1]
    assert params["event_ids"] == [e1.event_id, e2.event_id, e3.event_id]
    assert params["types"] == ["test.Opened", "test.Deposited", "test.Opened"]
    assert params["schema_versions"] == [1, 1, 1]
    assert [json.loads(d) for d in params["data"]] == [
        {"owner": "a"},
        {"amount": 1},
        {"owner": "b"},
    ]
    assert [json.loads(m) for m in params["metadata"]] == [{"k": "v"}, {"k": "v"}, {}]


def test_two_chaining_appends_to_one_stream_merge() -> None:
    """A second append expecting where the first ends is merged into one row."""
    staged = StagedAppends()
    first = staged.add("s", [Opened(owner="a")], NO_STREAM, None, None)
    second = staged.add("s", [Deposited(amount=1), Deposited(amount=2)], 1, None, None)
    third = staged.add("s", [Deposited(amount=3)], ANY, None, None)
    params = staged.params(4)
    assert params["stream_ids"] == ["s"]
    assert params["expected"] == [-1]
    assert params["counts"] == [4]
    # The function's row for the stream fills every staged append from its end.
    staged.resolve([("s", "ok", 4, 2, 10)], "app")
    assert (first.stream_version, first.position) == (1, 7)
    assert (first.token, third.token) == ("p1:app:2:7", "p1:app:2:10")
    assert (second.stream_version, second.position) == (3, 9)
    assert (third.stream_version, third.position, third.partition) == (4, 10, 2)
    assert not staged


def test_chaining_from_an_exact_version() -> None:
    """Merging counts from an exact expected version: expected 5 + 2 events chains at 7."""
    staged = StagedAppends()
    staged.add("s", [Deposited(amount=1), Deposited(amount=2)], 5, None, None)
    staged.add("s", [Deposited(amount=3)], 7, None, None)
    assert staged.params(4)["counts"] == [3]


@pytest.mark.parametrize(
    ("first", "second", "actual"),
    [(NO_STREAM, 0, 1), (NO_STREAM, NO_STREAM, 1), (3, 3, 4), (3, 5, 4), (0, 2, 1)],
)
def test_non_chaining_append_conflicts_immediately(
    first: int | ExpectedVersion, second: int | ExpectedVersion, actual: int
) -> None:
    """A later append whose expected version does not chain raises ConcurrencyError at once."""
    staged = StagedAppends()
    staged.add("s", [Opened(owner="a")], first, None, None)
    with pytest.raises(ConcurrencyError) as info:
        staged.add("s", [Deposited(amount=1)], second, None, None)
    assert info.value.stream_id == "s"
    assert info.value.expected == second
    assert info.value.actual == actual
    assert staged.params(4)["counts"] == [1]  # the rejected append was not staged


def test_exact_append_after_any_is_refused() -> None:
    """After an ANY append the stream's version is unknown until commit: exact is a ValueError."""
    staged = StagedAppends()
    staged.add("s", [Opened(owner="a")], ANY, None, None)
    with pytest.raises(ValueError, match="with ANY earlier in this transaction"):
        staged.add("s", [Deposited(amount=1)], 1, None, None)


def test_empty_append_is_a_value_error() -> None:
    """An append without events is a ValueError naming the stream."""
    with pytest.raises(ValueError, match="'s-1' has no events"):
        StagedAppends().add("s-1", [], ANY, None, None)


@pytest.mark.parametrize("bad", [{"amount": 1}, "event", None])
def test_non_event_is_a_type_error(bad: object) -> None:
    """Appending something that is not an Event is a TypeError."""
    with pytest.raises(TypeError, match="Event instances"):
        StagedAppends().add("s", [Opened(owner="a"), bad], ANY, None, None)  # type: ignore[list-item]


def test_bad_partition_key_is_rejected() -> None:
    """The partition key follows the stream id rules."""
    with pytest.raises(ValueError, match="empty"):
        StagedAppends().add("s", [Opened(owner="a")], ANY, None, "")
    with pytest.raises(TypeError):
        StagedAppends().add("s", [Opened(owner="a")], ANY, None, 42)  # type: ignore[arg-type]


def test_metadata_must_be_json_serializable() -> None:
    """Metadata that json cannot encode is a TypeError at append time."""
    with pytest.raises(TypeError, match="JSON-serializable"):
        StagedAppends().add("s", [Opened(owner="a")], ANY, {"when": datetime.now(UTC)}, None)


def test_nul_in_metadata_is_a_value_error() -> None:
    """Metadata containing U+0000 is rejected before anything is sent."""
    with pytest.raises(ValueError, match="NUL"):
        StagedAppends().add("s", [Opened(owner="a")], ANY, {"k": "a\x00b"}, None)


def test_nul_in_payload_is_a_value_error() -> None:
    """An event payload containing U+0000 is rejected at append time, before anything is sent."""
    staged = StagedAppends()
    with pytest.raises(ValueError, match="NUL"):
        staged.add("s", [Opened(owner="a\x00b")], ANY, None, None)
    assert not staged


def test_literal_backslash_u0000_text_is_not_a_nul() -> None:
    """A backslash followed by 'u0000' is ordinary text, not NUL: it is accepted."""
    staged = StagedAppends()
    staged.add("s", [Opened(owner="C:\\u0000dir")], ANY, {"path": "C:\\u0000dir"}, None)
    assert json.loads(staged.params(4)["data"][0]) == {"owner": "C:\\u0000dir"}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_in_metadata_are_rejected(value: float) -> None:
    """NaN and Infinity are not JSON: metadata holding them is rejected at append time."""
    with pytest.raises(ValueError, match="metadata"):
        StagedAppends().add("s", [Opened(owner="a")], ANY, {"score": value}, None)


def test_correlation_ids_are_added_to_metadata() -> None:
    """Inside correlation(), staged metadata carries the ids unless the caller set them."""
    staged = StagedAppends()
    with correlation(correlation_id="corr-1", causation_id="cause-1"):
        staged.add("a", [Opened(owner="a")], ANY, {"user": "u"}, None)
        staged.add("b", [Opened(owner="b")], ANY, {"correlation_id": "mine"}, None)
    staged.add("c", [Opened(owner="c")], ANY, None, None)
    metadata = [json.loads(m) for m in staged.params(4)["metadata"]]
    assert metadata == [
        {"user": "u", "correlation_id": "corr-1", "causation_id": "cause-1"},
        {"correlation_id": "mine", "causation_id": "cause-1"},
        {},
    ]


# -- value types --------------------------------------------------------------------------


def test_pending_append_raises_until_resolved() -> None:
    """PendingAppend fields raise EventSourceError until the append is written."""
    pending = PendingAppend("s", 2)
    assert not pending.done
    assert "not written yet" in repr(pending)
    for field in ("result", "stream_version", "partition", "position", "duplicate"):
        with pytest.raises(EventSourceError, match="not written yet"):
            getattr(pending, field)


def test_append_result_is_frozen() -> None:
    """AppendResult is an immutable value with duplicate=False by default."""
    result = AppendResult("s", 2, 1, 9)
    assert result.duplicate is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.position = 10  # type: ignore[misc]


def test_recorded_event_decodes_lazily() -> None:
    """RecordedEvent exposes its row; .event decodes (once) and .data/.metadata parse JSON."""
    event_id = uuid.uuid4()
    now = datetime.now(UTC)
    record = RecordedEvent(
        str(event_id), "s", 1, 2, 3, "test.Deposited", 1, '{"amount": 5}', '{"m": 1}', now
    )
    assert record.event_id == event_id
    assert (record.stream_id, record.stream_version, record.partition, record.position) == (
        "s",
        1,
        2,
        3,
    )
    assert record.data == {"amount": 5}
    assert record.metadata == {"m": 1}
    assert record.event == Deposited(amount=5, event_id=event_id)
    assert record.event is record.event
    assert record.recorded_at == now
    assert "test.Deposited" in repr(record)


def test_concurrency_error_fields_and_message() -> None:
    """ConcurrencyError carries stream_id, expected and actual and says nothing was written."""
    error = ConcurrencyError("acc-1", NO_STREAM, 3)
    assert (error.stream_id, error.expected, error.actual) == ("acc-1", NO_STREAM, 3)
    assert "'acc-1'" in str(error)
    assert "NO_STREAM" in str(error)
    assert "nothing was written" in str(error)


def test_error_docstring_is_the_default_message() -> None:
    """An exception raised without a message uses its docstring."""
    assert str(EventSourceError()) == "An eventsource operation failed."
    error = SchemaNotReady("es")
    assert error.schema == "es"
    assert "eventsource db upgrade" in str(error)


def test_driver_errors_of_concurrent_transactions_say_to_retry() -> None:
    """A serialization failure or a deadlock is a retryable error, not an unreachable server."""
    url = make_url("postgresql+psycopg://app:secret@db.example:5432/shop")
    for orig, kind in (
        (psycopg.errors.SerializationFailure("could not serialize access"), SerializationFailure),
        (psycopg.errors.DeadlockDetected("deadlock detected"), DeadlockDetected),
    ):
        error = translate(orig, url, "es")
        assert type(error) is kind
        assert isinstance(error, RetryableError)
        assert "retry it" in str(error)
        assert "secret" not in str(error)
    for orig in (
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
    ):
        error = translate(orig, url, "es")
        assert type(error) is StatementCancelled
        assert not isinstance(error, RetryableError)
        assert str(error).startswith("the statement was cancelled")
        assert "timeout" in str(error)
