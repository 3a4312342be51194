"""Bad input through the API on a real PostgreSQL: a clear error that names the field, and
nothing written; stored payloads that no longer decode raise eventsource errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

import projections
from eventsource import (
    NO_STREAM,
    AsyncEventStore,
    Command,
    CommandQueue,
    Event,
    EventSourceError,
    EventStore,
    RecordedEvent,
)
from eventsource._events import EventDecodeError
from eventsource._json import MAX_JSON_DEPTH
from eventsource.db import quote_schema
from projections import Projection, handles
from tests.domain import Deposited
from tests.values import dicts, lists

from ._support import log_state, sql

pytestmark = pytest.mark.timeout(120)


class DeepThing(Event, name="it.bad.DeepThing"):
    """An event with a free-form field, nested as deep as a test needs."""

    value: Any


class Job(Command, name="it.bad.Job"):
    """A command to enqueue (no worker runs it here)."""

    run: str


class DeepCommand(Command, name="it.bad.DeepCommand"):
    """A command with a free-form field, nested as deep as a test needs."""

    value: Any


class Deposits(Projection):
    """Counts the deposits it sees; used to show a stored payload that does not decode."""

    name = "it.bad.deposits"

    def __init__(self) -> None:
        self.seen: list[int] = []

    @handles(Deposited)
    def on_deposit(self, event: Deposited, record: RecordedEvent, tx: Any) -> None:
        self.seen.append(event.amount)


FAST: dict[str, Any] = {
    "lease_ttl": 2.0,
    "heartbeat_interval": 0.2,
    "poll_interval": 0.1,
    "max_attempts": 2,
    "retry_delays": (0.01,),
}


def commands(store: EventStore) -> int:
    """How many commands are stored, in any state."""
    return int(sql(store, "SELECT count(*) FROM {s}.commands")[0][0])


# -- payloads and metadata that reads could not decode (finding 20) -----------------------


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 230, 253, 254, 300])
def test_append_refuses_a_payload_too_deep_to_read(store: EventStore, depth: int) -> None:
    """An event nested deeper than reads decode is a ValueError naming type and depth; no write."""
    before = log_state(store)
    with pytest.raises(ValueError, match=r"event it\.bad\.DeepThing is nested \d+ levels deep"):
        store.append("deep-1", [Deposited(amount=1), DeepThing(value=lists(depth))])
    assert log_state(store) == before


def test_the_deepest_payload_append_accepts_is_read_back(store: EventStore) -> None:
    """The deepest payload that append takes is read back by read_stream and read_partition."""
    event = DeepThing(value=lists(MAX_JSON_DEPTH - 1))  # 200 levels with the event's object
    result = store.append("deep-ok", [event])
    (record,) = store.read_stream("deep-ok")
    assert record.event == event
    (record,) = store.read_partition(result.partition, after=0, limit=10)
    assert record.event == event


def test_a_too_deep_payload_in_a_transaction_writes_nothing(store: EventStore) -> None:
    """In a transaction the deep event fails its append; the block's other appends roll back."""
    before = log_state(store)
    with pytest.raises(ValueError, match="nested 201 levels deep"), store.transaction() as tx:
        store.append("tx-ok", [Deposited(amount=1)], tx=tx)
        store.append("tx-deep", [DeepThing(value=lists(MAX_JSON_DEPTH))], tx=tx)
    assert log_state(store) == before


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000])
def test_append_refuses_metadata_too_deep_to_read(store: EventStore, depth: int) -> None:
    """Metadata nested 201 or 1,000 deep is a ValueError naming metadata and its depth, not a
    RecursionError; nothing is written."""
    before = log_state(store)
    with pytest.raises(ValueError, match=rf"^metadata is nested {depth} levels deep"):
        store.append("meta-deep", [Deposited(amount=1)], metadata=dicts(depth))
    assert log_state(store) == before


async def test_async_append_refuses_deep_payloads_and_metadata(
    async_store: AsyncEventStore,
) -> None:
    """The async store refuses the same payloads and metadata, and writes nothing."""
    with pytest.raises(ValueError, match=r"event it\.bad\.DeepThing is nested 201 levels"):
        await async_store.append("a-deep", [DeepThing(value=lists(MAX_JSON_DEPTH))])
    with pytest.raises(ValueError, match="metadata is nested 1000 levels deep"):
        await async_store.append("a-deep", [Deposited(amount=1)], metadata=dicts(1000))
    assert await async_store.stream_version("a-deep") == 0
    assert sum((await async_store.heads()).values()) == 0


def test_enqueue_refuses_a_command_payload_too_deep_to_read(store: EventStore) -> None:
    """A command whose payload the worker could not decode is refused; nothing is queued."""
    with pytest.raises(ValueError, match=r"command it\.bad\.DeepCommand is nested 201 levels"):
        CommandQueue(store).enqueue(DeepCommand(value=lists(MAX_JSON_DEPTH)))
    assert commands(store) == 0


# -- stored payloads that no longer decode -------------------------------------------------


def _store_payload(store: EventStore, stream_id: str, payload: str) -> None:
    """Overwrite a stored event's payload, as an old or foreign writer might have stored it."""
    with store.engine.begin() as conn:
        conn.execute(
            text(
                f"UPDATE {quote_schema(store.schema)}.events SET data = CAST(:d AS jsonb)"
                " WHERE stream_id = :s"
            ),
            {"d": payload, "s": stream_id},
        )


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ('{"amount": "many"}', "amount: Input should be a valid integer"),
        ('{"amount": ' + "[" * 250 + "]" * 250 + "}", "recursion limit exceeded"),
    ],
    ids=["wrong-type", "too-deep"],
)
def test_reading_a_payload_that_does_not_decode_names_type_stream_and_version(
    store: EventStore, payload: str, detail: str
) -> None:
    """read_stream and read_partition raise EventDecodeError naming type, stream and version."""
    result = store.append("bad-payload", [Deposited(amount=1)])
    _store_payload(store, "bad-payload", payload)
    where = r"'test\.Deposited' \(schema version 1\) of stream 'bad-payload' at version 1"
    with pytest.raises(EventDecodeError, match=where) as info:
        store.read_stream("bad-payload")
    assert detail in str(info.value)
    assert isinstance(info.value, EventSourceError)
    assert (info.value.stream_id, info.value.stream_version) == ("bad-payload", 1)
    assert "For further information" not in str(info.value)
    with pytest.raises(EventDecodeError, match=where):
        store.read_partition(result.partition, after=0, limit=10)
    (lazy,) = store.read_partition(result.partition, after=0, limit=10, decode=False)
    with pytest.raises(EventDecodeError, match=where):
        _ = lazy.event


def test_a_projection_shows_the_decode_error_not_pydantics_footer(store: EventStore) -> None:
    """A payload that does not decode stops its partition with a status error naming the event
    type, stream and version on its last line (not "For further information visit ...")."""
    store.append("poison-payload", [Deposited(amount=1)])
    _store_payload(store, "poison-payload", '{"amount": "many"}')
    projections.run(store, [Deposits()], stop_when_caught_up=True, **FAST)
    (stopped,) = [s for s in projections.status(store) if s.error]
    last = stopped.error.strip().splitlines()[-1] if stopped.error else ""
    assert last.startswith("eventsource._errors.EventDecodeError: stored event 'test.Deposited'")
    assert "of stream 'poison-payload' at version 1" in last
    assert "amount: Input should be a valid integer" in last
    assert "For further information" not in last


# -- names and keys that PostgreSQL cannot store (finding 21) ------------------------------

SURROGATE = "x\udcff"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.append(SURROGATE, [Deposited(amount=1)]), "stream id is not valid UTF-8"),
        (
            lambda s: s.append("ok", [Deposited(amount=1)], partition_key=SURROGATE),
            "partition_key is not valid UTF-8",
        ),
        (
            lambda s: s.append("ok", [Deposited(amount=1)], partition_key="k\x00"),
            "partition_key must not contain a NUL",
        ),
        (lambda s: s.read_stream(SURROGATE), "stream id is not valid UTF-8"),
        (lambda s: s.stream_version(SURROGATE), "stream id is not valid UTF-8"),
        (
            lambda s: s.append("ok", [Deposited(amount=1)], expected_version=2**63),
            "expected_version must be an int from 0 to 9223372036854775807",
        ),
        (
            lambda s: s.append("ok", [Deposited(amount=1)], metadata={"k": "v\udcff"}),
            "metadata cannot be stored as JSON: metadata contains a lone surrogate",
        ),
        (lambda s: s.read_partition(0, after=0, limit=2**63), "limit must be from 0 to"),
        (lambda s: s.read_partition(0, after=2**63, limit=1), "after must be from 0 to"),
        (lambda s: list(s.iter_partition(0, batch=2**63)), "batch must be from 0 to"),
    ],
    ids=[
        "stream-surrogate",
        "partition-key-surrogate",
        "partition-key-nul",
        "read-surrogate",
        "version-surrogate",
        "expected-2**63",
        "metadata-surrogate",
        "limit-2**63",
        "after-2**63",
        "batch-2**63",
    ],
)
def test_store_arguments_are_checked_before_anything_is_written(
    store: EventStore, call: Callable[[EventStore], Any], match: str
) -> None:
    """Each bad store argument is a ValueError naming it (no UnicodeEncodeError, no database
    range error), and the log is unchanged."""
    before = log_state(store)
    with pytest.raises(ValueError, match=match) as info:
        call(store)
    assert not isinstance(info.value, UnicodeError)
    assert "database error" not in str(info.value)
    assert log_state(store) == before


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"queue": SURROGATE}, "queue name is not valid UTF-8"),
        ({"dedupe_key": SURROGATE}, "dedupe_key is not valid UTF-8"),
        ({"ordering_key": SURROGATE}, "ordering_key is not valid UTF-8"),
        ({"delay": 1e300}, "delay must be from 0 to"),
        ({"delay": float("nan")}, "delay must be from 0 to"),
        ({"priority": 2**31}, "priority must be from -2147483648 to 2147483647"),
        ({"max_attempts": 2**63}, "max_attempts must be from 1 to 1000"),
    ],
    ids=["queue", "dedupe", "ordering", "delay-1e300", "delay-nan", "priority", "attempts"],
)
def test_enqueue_arguments_are_checked_and_nothing_is_queued(
    store: EventStore, options: dict[str, Any], match: str
) -> None:
    """Bad enqueue options are ValueErrors naming them; no command is written."""
    queue = CommandQueue(store)
    with pytest.raises(ValueError, match=match):
        queue.enqueue(Job(run="ok"), **options)
    if "dedupe_key" not in options:  # enqueue_many takes no dedupe key
        with pytest.raises(ValueError, match=match):
            queue.enqueue_many([Job(run="ok"), Job(run="ok")], **options)
    with pytest.raises(ValueError, match=match), store.transaction() as tx:
        store.append("with-command", [Deposited(amount=1)], tx=tx)
        queue.enqueue(Job(run="ok"), tx=tx, **options)
    assert commands(store) == 0
    assert store.stream_version("with-command") == 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda q: q.list(limit=2**63), "limit must be from 1 to 9223372036854775807"),
        (lambda q: q.dead(queue=SURROGATE), "queue name is not valid UTF-8"),
        (lambda q: q.get(2**63), "command_id must be from 1 to 9223372036854775807"),
        (lambda q: q.retry(2**70), "command_id must be from 1 to"),
        (lambda q: q.purge(older_than=1e300), "older_than must be from 0 to"),
        (lambda q: q.purge(queue="q\x00"), "queue name must not contain a NUL"),
    ],
    ids=["list-limit", "dead-queue", "get-id", "retry-id", "purge-age", "purge-queue"],
)
def test_queue_operations_check_ranges_up_front(
    store: EventStore, call: Callable[[CommandQueue], Any], match: str
) -> None:
    """Operations with out-of-range or unstorable arguments fail naming them, not the database."""
    CommandQueue(store).enqueue(Job(run="kept"))
    with pytest.raises(ValueError, match=match) as info:
        call(CommandQueue(store))
    assert "database error" not in str(info.value)
    assert commands(store) == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda s, r: projections.wait_for(s, SURROGATE, r, timeout=0.1),
            "projection name is not valid UTF-8",
        ),
        (
            lambda s, r: projections.wait_for(s, "p\x00", r, timeout=0.1),
            "projection name must not contain a NUL",
        ),
        (
            lambda s, r: projections.wait_for(s, "p", r, timeout=1e300),
            "timeout must be from 0 to",
        ),
        (lambda s, r: projections.retry(s, SURROGATE, 0), "projection name is not valid UTF-8"),
        (lambda s, r: projections.skip(s, "p\x00", 0), "projection name must not contain a NUL"),
        (lambda s, r: projections.retry(s, "p", 2**70), "partition 1180591620717411303424"),
        (lambda s, r: projections.skip(s, "p", -1), "partition -1 does not exist"),
    ],
    ids=[
        "wait-surrogate",
        "wait-nul",
        "wait-timeout",
        "retry-surrogate",
        "skip-nul",
        "retry-partition",
        "skip-partition",
    ],
)
def test_projection_operations_check_names_and_partitions(
    store: EventStore, call: Callable[[EventStore, Any], Any], match: str
) -> None:
    """Projection operations name a bad projection name or partition; nothing is changed."""
    result = store.append("p-1", [Deposited(amount=1)], expected_version=NO_STREAM)
    with pytest.raises(ValueError, match=match):
        call(store, result)
    assert sql(store, "SELECT count(*) FROM {s}.projection_checkpoints")[0][0] == 0
    assert sql(store, "SELECT count(*) FROM {s}.projection_skips")[0][0] == 0


def test_read_stream_checks_after_version_up_front(store: EventStore) -> None:
    """after_version past bigint is refused by name before any query."""
    with pytest.raises(ValueError, match="after_version"):
        store.read_stream("s-1", after_version=2**63)


def test_from_url_checks_the_port_and_the_pool_size(database_url: str) -> None:
    """A non-numeric port and a pool size of 0 are refused by name, without the password."""
    with pytest.raises(ValueError, match="port of the database URL") as info:
        EventStore.from_url("postgresql://u:secret@localhost:abc/db")
    assert "secret" not in str(info.value)
    with pytest.raises(ValueError, match="pool_size"):
        EventStore.from_url(database_url, pool_size=0)


def test_a_stored_command_payload_that_does_not_decode_fails_in_one_line(
    store: EventStore,
) -> None:
    """A payload that no longer matches its command class dead-letters the command with one
    line naming the command, not pydantic's multi-line report."""
    from eventsource import CommandQueue, CommandWorker  # noqa: PLC0415
    from tests.integration._probes import HANDLERS, Job  # noqa: PLC0415

    queue = CommandQueue(store)
    queued = queue.enqueue(Job(probe="p", n=1), max_attempts=1)
    sql(store, 'UPDATE {s}.commands SET payload = \'{{"n": "x"}}\'::jsonb')
    worker = CommandWorker(store, handlers=HANDLERS, listen=False, poll_interval=0.05)
    worker.run(stop_when_idle=True)
    (dead,) = queue.dead()
    assert dead.id == queued.id
    assert dead.last_error is not None
    assert "\n" not in dead.last_error
    assert dead.last_error.startswith(
        f"EventSourceError: command {queued.id} (test.cq.Job): its stored payload does not"
        " decode to Job"
    )
