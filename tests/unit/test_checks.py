"""The shared input checks of eventsource._checks: names, integers, durations, JSON depth, URLs."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic_core
import pytest
from pydantic import BaseModel

from eventsource import NO_STREAM, Event, EventSourceError, correlation
from eventsource._checks import (
    BIGINT_MAX,
    INT_MAX,
    check_aware_datetime,
    check_database_url,
    check_int,
    check_name,
    check_seconds,
)
from eventsource._events import EventDecodeError, decode_event, encode_event
from eventsource._json import (
    MAX_JSON_DEPTH,
    check_json_depth,
    json_depth,
    object_depth,
)
from eventsource.store import StagedAppends, check_expected, check_range, check_stream_id
from tests.domain import Deposited
from tests.values import dicts, lists


class Nested(Event, name="unit.checks.Nested"):
    """An event with a free-form field, to nest payloads as deep as a test needs."""

    value: Any


# -- check_name ---------------------------------------------------------------------------


def test_check_name_returns_good_names_unchanged() -> None:
    """Names of 1..max_length characters of any text but NUL pass through as given."""
    for ok in ["a", "x" * 200, "😀", "w-1:host", "'; DROP TABLE x; --"]:
        assert check_name(ok, "worker_id") == ok
    assert check_name("k" * 500, "dedupe_key", max_length=500) == "k" * 500
    assert check_name("  ", "stream id", blank=True) == "  "


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (None, TypeError, r"worker_id must be a str, got NoneType: None"),
        (5, TypeError, r"worker_id must be a str, got int: 5"),
        (b"w", TypeError, r"worker_id must be a str, got bytes"),
        ("", ValueError, r"worker_id must not be empty, got ''"),
        ("   ", ValueError, r"worker_id must not be empty, got '   '"),
        ("w" * 201, ValueError, r"worker_id is 201 characters long, longer than 200: 'www"),
        ("w\x00", ValueError, r"worker_id must not contain a NUL character: 'w\\x00'"),
        ("w\udcff", ValueError, r"worker_id is not valid UTF-8 text.*'w\\udcff'"),
        ("\ud800x", ValueError, r"lone surrogate '\\ud800' at index 0"),
    ],
)
def test_check_name_names_the_field_and_shows_the_value(
    bad: object, error: type[Exception], match: str
) -> None:
    """Non-str is a TypeError; empty, long, NUL and lone surrogates are ValueErrors; all name it."""
    with pytest.raises(error, match=match):
        check_name(bad, "worker_id")


def test_there_is_one_check_name() -> None:
    """The command queue and the projections use the one check_name of eventsource._checks."""
    from eventsource.commands import _command, _params  # noqa: PLC0415
    from projections import _projection  # noqa: PLC0415

    assert _command.check_name is check_name
    assert _params.check_name is check_name
    assert _projection.check_name is check_name
    with pytest.raises(ValueError, match="projection name must not be empty"):
        _projection.check_projection_name("")
    with pytest.raises(ValueError, match="queue name must not be empty"):
        _params.check_name("", "queue name")


# -- check_int ----------------------------------------------------------------------------


def test_check_int_accepts_the_bigint_range() -> None:
    """By default any bigint passes, both ends included."""
    assert check_int(BIGINT_MAX, "limit") == BIGINT_MAX
    assert check_int(-(2**63), "after") == -(2**63)
    assert check_int(INT_MAX, "partition", low=0, high=INT_MAX) == INT_MAX


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (
            2**63,
            ValueError,
            r"limit must be from 1 to 9223372036854775807, got 9223372036854775808",
        ),
        (0, ValueError, r"limit must be from 1 to"),
        (True, TypeError, r"limit must be an int, got bool: True"),
        (1.0, TypeError, r"limit must be an int, got float: 1.0"),
        ("1", TypeError, r"limit must be an int, got str: '1'"),
    ],
)
def test_check_int_names_the_field(bad: object, error: type[Exception], match: str) -> None:
    """Out of range is a ValueError, another type a TypeError; both name the argument."""
    with pytest.raises(error, match=match):
        check_int(bad, "limit", low=1)


# -- check_seconds ------------------------------------------------------------------------


def test_check_seconds_returns_floats_within_the_bounds() -> None:
    """Ints and floats from low to high (inclusive) come back as floats."""
    assert check_seconds(1, "poll_interval") == 1.0
    assert isinstance(check_seconds(1, "poll_interval"), float)
    assert check_seconds(0, "grace") == 0.0
    assert check_seconds(86400, "lease") == 86400.0
    assert check_seconds(0.5, "lease", low=0.5, high=3600) == 0.5


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (1e10, ValueError),
        (86400.5, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
        (10**400, ValueError),
        (True, TypeError),
        ("1", TypeError),
        (None, TypeError),
    ],
)
def test_check_seconds_refuses_what_a_wait_cannot_take(bad: object, error: type[Exception]) -> None:
    """NaN, infinities, huge and negative values and non-numbers are refused, naming the field."""
    with pytest.raises(error, match="poll_interval"):
        check_seconds(bad, "poll_interval")


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (-1, ValueError, r"^grace must not be negative, got -1$"),
        (86400.5, ValueError, r"^grace must be from 0 to 86400 seconds, got 86400\.5$"),
        (math.nan, ValueError, r"^grace must be from 0 to 86400 seconds, got nan$"),
        (10**400, ValueError, r"^grace must be from 0 to 86400 seconds, got 1000"),
        (True, TypeError, r"^grace must be a number of seconds, got bool: True$"),
        (timedelta(seconds=1), TypeError, r"^grace must be a number of seconds, got timedelta"),
    ],
)
def test_check_seconds_messages(bad: object, error: type[Exception], match: str) -> None:
    """One line naming the argument and the value: negative, out of range, or another type."""
    with pytest.raises(error, match=match):
        check_seconds(bad, "grace")


def test_check_seconds_or_timedelta() -> None:
    """With or_timedelta a timedelta counts as its seconds, and is checked like them."""
    assert check_seconds(timedelta(minutes=2), "delay", or_timedelta=True) == 120.0
    assert check_seconds(3, "delay", or_timedelta=True) == 3.0
    with pytest.raises(ValueError, match=r"^delay must not be negative, got -5\.0$"):
        check_seconds(timedelta(seconds=-5), "delay", or_timedelta=True)
    with pytest.raises(ValueError, match=r"^delay must be from 0 to 86400 seconds, got 172800\.0$"):
        check_seconds(timedelta(days=2), "delay", or_timedelta=True)
    with pytest.raises(TypeError, match=r"^delay must be a number of seconds, got timedelta"):
        check_seconds(timedelta(days=2), "delay")
    with pytest.raises(TypeError, match=r"^delay must be a number of seconds or a timedelta, got"):
        check_seconds("5", "delay", or_timedelta=True)


def test_check_int_below_zero_is_negative() -> None:
    """Below a lower bound of 0 the message says "must not be negative"; other bounds show."""
    with pytest.raises(ValueError, match=r"^after must not be negative, got -1$"):
        check_int(-1, "after", low=0)
    with pytest.raises(ValueError, match=r"^limit must be from 1 to 10, got 0$"):
        check_int(0, "limit", low=1, high=10)


def test_check_aware_datetime() -> None:
    """A timezone-aware datetime passes unchanged; a naive one or another type is refused."""
    aware = datetime(2030, 1, 1, tzinfo=UTC)
    assert check_aware_datetime(aware, "run_at") == aware
    with pytest.raises(ValueError, match=r"^run_at must be timezone-aware, got datetime"):
        check_aware_datetime(datetime(2030, 1, 1), "run_at")  # naive
    with pytest.raises(TypeError, match=r"^run_at must be a datetime, got str: '2030-01-01'$"):
        check_aware_datetime("2030-01-01", "run_at")


# -- JSON depth ---------------------------------------------------------------------------


def test_max_json_depth_is_the_limit_of_pydantics_parser() -> None:
    """pydantic's JSON parser decodes MAX_JSON_DEPTH levels and refuses one more."""
    pydantic_core.from_json(json.dumps(lists(MAX_JSON_DEPTH)))
    with pytest.raises(ValueError, match="recursion limit"):
        pydantic_core.from_json(json.dumps(lists(MAX_JSON_DEPTH + 1)))


def test_json_depth_counts_containers_not_brackets_in_strings() -> None:
    """json_depth counts nested objects and arrays; brackets inside strings do not count."""
    assert json_depth("1") == 0
    assert json_depth("{}") == 1
    assert json_depth('{"a": [1, {"b": []}]}') == 4
    assert json_depth(json.dumps({"s": '[[[[{{{{\\"]]]'})) == 1  # an escaped quote inside
    assert json_depth(json.dumps(lists(250))) == 250


def test_check_json_depth_refuses_only_what_reads_cannot_decode() -> None:
    """Documents pydantic can parse pass unchanged; deeper ones are a ValueError with the depth."""
    ok = json.dumps(lists(MAX_JSON_DEPTH))
    assert check_json_depth(ok, "event x") is ok
    many = json.dumps([[i] for i in range(1000)])  # many brackets, shallow
    assert check_json_depth(many, "event x") is many
    strings = json.dumps({"s": "[" * 1000})  # brackets inside a string
    assert check_json_depth(strings, "event x") is strings
    with pytest.raises(
        ValueError, match=r"^event x is nested 201 levels deep, deeper than the 200 "
    ):
        check_json_depth(json.dumps(lists(MAX_JSON_DEPTH + 1)), "event x")


def test_object_depth_measures_without_recursion() -> None:
    """object_depth measures lists, dicts and models iteratively, and spots cycles."""

    class Box(BaseModel):
        inner: Any = None

    assert object_depth(1) == 0
    assert object_depth(lists(3)) == 3
    assert object_depth(dicts(5000)) == 5000  # far past the recursion limit
    assert object_depth(Box(inner=Box(inner=[1]))) == 3
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert object_depth(cyclic) is None


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 254, 255, 300])
def test_encode_refuses_payloads_reads_cannot_decode(depth: int) -> None:
    """A payload nested deeper than reads decode is a ValueError naming the type and depth."""
    with pytest.raises(ValueError, match=r"event unit\.checks\.Nested is nested \d+ levels deep"):
        encode_event(Nested(value=lists(depth)))


def test_encode_accepts_the_deepest_payload_reads_can_decode() -> None:
    """The deepest payload that encodes also decodes: writes and reads agree on the limit."""
    event = Nested(value=lists(MAX_JSON_DEPTH - 1))  # 199 lists in the event's object: 200
    data = encode_event(event)
    decoded = decode_event(Nested.event_type, 1, data, str(event.event_id))
    assert decoded == event


def test_staged_append_refuses_deep_payloads_and_stages_nothing() -> None:
    """StagedAppends.add refuses a too-deep payload before staging anything."""
    staged = StagedAppends()
    with pytest.raises(ValueError, match="nested 201 levels deep"):
        staged.add("s-1", [Deposited(amount=1), Nested(value=lists(200))], NO_STREAM, None, None)
    assert not staged


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 500, 1000, 5000])
def test_deep_metadata_is_a_clear_value_error(depth: int) -> None:
    """Metadata nested too deep is a ValueError naming metadata and depth, not RecursionError."""
    staged = StagedAppends()
    staged.add("ok", [Deposited(amount=1)], NO_STREAM, dicts(MAX_JSON_DEPTH), None)  # the limit
    with pytest.raises(ValueError, match=rf"^metadata is nested {depth} levels deep"):
        staged.add("s-1", [Deposited(amount=1)], NO_STREAM, dicts(depth), None)
    assert [p.stream_id for p in staged.pending()] == ["ok"]


def test_circular_metadata_is_a_clear_value_error() -> None:
    """Metadata that contains itself is a ValueError saying so."""
    meta: dict[str, Any] = {}
    meta["self"] = meta
    with pytest.raises(ValueError, match="metadata contains a circular reference"):
        StagedAppends().add("s-1", [Deposited(amount=1)], NO_STREAM, meta, None)


def test_metadata_must_be_a_mapping() -> None:
    """Metadata that is not a mapping is a TypeError naming metadata."""
    with pytest.raises(TypeError, match="metadata must be a mapping"):
        StagedAppends().add("s-1", [Deposited(amount=1)], NO_STREAM, [("k", "v")], None)  # type: ignore[arg-type]


def test_undecodable_payload_is_an_eventsource_error() -> None:
    """A stored payload too deep for the parser is an EventDecodeError, not a ValidationError."""
    data = json.dumps({"value": lists(250)})
    with pytest.raises(EventDecodeError, match=r"'unit\.checks\.Nested'.*recursion limit") as info:
        decode_event(Nested.event_type, 1, data, str(uuid.uuid4()))
    assert isinstance(info.value, EventSourceError)
    assert "For further information" not in str(info.value)


# -- store arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "value"),
    [
        ("stream id", "s\udcff"),
        ("stream id", "\ud800"),
    ],
)
def test_stream_ids_must_be_utf8(what: str, value: str) -> None:
    """A lone surrogate in a stream id is a ValueError naming the stream id."""
    with pytest.raises(ValueError, match=f"{what} is not valid UTF-8"):
        check_stream_id(value)


def test_partition_key_is_checked_under_its_own_name() -> None:
    """A bad partition key names partition_key (not the stream id)."""
    staged = StagedAppends()
    with pytest.raises(ValueError, match="partition_key is not valid UTF-8"):
        staged.add("s-1", [Deposited(amount=1)], NO_STREAM, None, "k\udcff")
    with pytest.raises(ValueError, match="partition_key must not contain a NUL"):
        staged.add("s-1", [Deposited(amount=1)], NO_STREAM, None, "k\x00")
    assert not staged


def test_expected_version_and_paging_are_bigints() -> None:
    """expected_version, after and limit beyond the bigint range are refused up front."""
    assert check_expected(BIGINT_MAX) == BIGINT_MAX
    with pytest.raises(ValueError, match=f"expected_version must be an int from 0 to {BIGINT_MAX}"):
        check_expected(2**63)
    check_range(BIGINT_MAX, BIGINT_MAX)
    with pytest.raises(ValueError, match="limit must be from 0 to 9223372036854775807"):
        check_range(0, 2**63)
    with pytest.raises(ValueError, match="after must be from 0 to"):
        check_range(2**64, 10)
    with pytest.raises(TypeError, match="limit must be an int"):
        check_range(0, 1.5)


@pytest.mark.parametrize(
    "bad", ["corr\x00", "corr\udcff", "", "c" * 501], ids=["nul", "surrogate", "empty", "long"]
)
def test_correlation_ids_are_checked_when_set(bad: str) -> None:
    """A correlation id that could not be stored is refused by correlation(), naming it."""
    with pytest.raises(ValueError, match="correlation_id"), correlation(correlation_id=bad):
        pass
    with pytest.raises(ValueError, match="causation_id"), correlation(causation_id=bad):
        pass


# -- database URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("postgresql://u:pw@h:abc/db", r"port of the database URL must be a number .* got 'abc'"),
        ("postgresql://u:pw@h:/db", r"port of the database URL must be a number .* got ''"),
        ("postgresql://u@h:70000/db", r"got '70000'"),
        ("postgresql://u@h:0/db", r"got '0'"),
        ("postgresql:///db?host=/tmp&port=x1", r"got 'x1'"),
        ("mysql://u@h/db", r"needs PostgreSQL"),
        ("not a url", r"invalid database URL"),
        ("postgresql://u:p\udcffw@h/db", r"not valid UTF-8 text"),
    ],
)
def test_check_database_url_names_the_problem(url: str, match: str) -> None:
    """Bad URLs are ValueErrors naming the part at fault, never showing the password."""
    with pytest.raises(ValueError, match=match) as info:
        check_database_url(url)
    assert "pw" not in str(info.value)
    assert "int()" not in str(info.value)


def test_check_database_url_accepts_postgres_urls() -> None:
    """Ordinary PostgreSQL URLs, with ports in the host or in a port= list, pass unchanged."""
    for url in [
        "postgresql://u:pw@db:5432/app",
        "postgres://db/app",
        "postgresql+psycopg://u@[::1]:6543/app",
        "postgresql:///app?host=/a,/b&port=5432,5433",
    ]:
        assert check_database_url(url) == url
