"""The command queue's enqueue, for both twins: ids and stored rows, options, schedules,
priorities, enqueue_many, bad arguments and dedupe keys (transactions and the inspection of
commands: test_queue_operations.py).

What a command enqueued through either twin does once delivered is seen through a worker
over a sync store on the same schema (``worker_store``); the workers themselves are tested in
tests/integration/test_commands.py and tests/acceptance.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text

import eventsource.commands._queue
from eventsource import Command, CommandContext, Enqueued, EventStore, UnknownCommandType
from tests.integration._probes import (
    Job,
    Probe,
    claim,
    count,
    drain,
    make_worker,
    running,
    wait_until,
)
from tests.integration._support import sql

from ._twins import concurrently


class Mail(Command, name="test.contract.Mail", queue="mail", max_attempts=2):
    """A command class with its own default queue and max attempts (never handled)."""

    to: str


@contextmanager
def statements_sent(twin: str) -> Iterator[list[str]]:
    """The statements the twin's queue sends to the database within the block."""
    module: Any = eventsource.commands._queue
    name = "fetch" if twin == "sync" else "fetch_async"
    real = getattr(module, name)
    sent: list[str] = []

    def counting(conn: Any, statement: str, params: Any = None) -> Any:
        sent.append(statement)
        return real(conn, statement, params)  # the async twin's coroutine is awaited by it

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, name, counting)
        yield sent


def queue_store(queue: Any) -> Any:
    """The store a queue (of either twin) writes to."""
    return getattr(queue, "_target", queue).store


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_returns_ids_and_stores_the_command(
    store: Any, make_queue: Callable[..., Any], probes: Callable[..., Probe]
) -> None:
    """enqueue returns increasing ids; the stored row holds queue, type, payload and defaults."""
    probe = probes()
    queue = make_queue(max_attempts=9)
    first = queue.enqueue(probe.job(n=1, note="hello"))
    second = queue.enqueue(probe.job(n=2), priority=3)
    assert isinstance(first, Enqueued)
    assert first.duplicate is False
    assert first.id is not None
    assert second.id is not None
    assert second.id > first.id
    info = queue.get(first.id)
    assert info is not None
    assert (info.queue, info.command_type, info.status) == ("default", "test.cq.Job", "pending")
    assert (info.priority, info.attempts, info.max_attempts) == (0, 0, 9)
    assert json.loads(info.payload) == {"probe": probe.key, "n": 1, "note": "hello"}
    assert info.lease_until is None
    assert info.worker is None
    assert info.last_error is None
    assert info.run_at == info.enqueued_at
    assert [i.id for i in queue.list()] == [first.id, second.id]
    assert queue.get(second.id).priority == 3
    assert queue.get(10**12) is None
    assert count(store) == 2


def test_class_defaults_and_enqueue_options_choose_queue_and_max_attempts(
    make_queue: Callable[..., Any],
) -> None:
    """max_attempts: enqueue's, else the class's, else the queue's; queue likewise."""
    queue = make_queue(max_attempts=7)
    by_class = queue.enqueue(Mail(to="ann"))
    by_call = queue.enqueue(Mail(to="bob"), queue="urgent", max_attempts=4)
    assert by_class.id is not None
    assert by_call.id is not None
    a, b = queue.get(by_class.id), queue.get(by_call.id)
    assert a is not None
    assert b is not None
    assert (a.queue, a.max_attempts) == ("mail", 2)
    assert (b.queue, b.max_attempts) == ("urgent", 4)
    assert [i.id for i in queue.list(queue="mail")] == [by_class.id]
    assert sorted(queue.counts()) == [
        ("mail", "pending", 1, a.enqueued_at),
        ("urgent", "pending", 1, b.enqueued_at),
    ]


# -- schedules and priorities --------------------------------------------------------------


def test_a_delayed_command_is_not_claimed_before_its_time(
    store: Any, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """delay= schedules a command: workers skip it until run_at, then run it."""
    probe = probes()
    started = time.monotonic()
    delayed = queue.enqueue(probe.job(n=1), delay=0.8)
    queue.enqueue(probe.job(n=2))
    assert delayed.id is not None
    info = queue.get(delayed.id)
    assert info is not None
    # Counted from the database clock when the statement runs (a moment after now()).
    assert (info.run_at - info.enqueued_at).total_seconds() == pytest.approx(0.8, abs=2e-2)
    with running(make_worker(worker_store)):
        wait_until(lambda: probe.ns == [2], "the undelayed command")
        time.sleep(0.3)
        assert probe.ns == [2]  # the delayed one is still waiting ...
        waiting = queue.get(delayed.id)
        assert waiting is not None
        assert (waiting.status, waiting.attempts) == ("pending", 0)
        wait_until(lambda: len(probe.calls) == 2, "the delayed command", timeout=5)
    assert probe.ns == [2, 1]
    assert probe.calls[1].start - started >= 0.75
    assert count(store) == 0


def test_run_at_and_timedelta_delay_schedule_commands(
    store: Any, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """run_at= (any time zone) and a timedelta delay are stored as instants; claims skip them."""
    probe = probes()
    plus5 = timezone(timedelta(hours=5))
    at = (datetime.now(UTC) + timedelta(seconds=0.6)).astimezone(plus5)
    by_run_at = queue.enqueue(probe.job(n=1), run_at=at)
    by_timedelta = queue.enqueue(probe.job(n=2), delay=timedelta(milliseconds=500))
    past = queue.enqueue(probe.job(n=3), run_at=datetime.now(UTC) - timedelta(hours=1))
    assert by_run_at.id is not None
    assert by_timedelta.id is not None
    stored = queue.get(by_run_at.id)
    assert stored is not None
    assert stored.run_at == at
    claimed = claim(worker_store)
    assert [row[0] for row in claimed] == [past.id]  # the scheduled ones are not ready yet
    sql(store, "DELETE FROM {s}.commands WHERE id = :id", {"id": past.id})
    drain(worker_store)
    assert sorted(probe.ns) == [1, 2]
    assert count(store) == 0


def test_a_delay_given_in_a_long_transaction_counts_from_the_enqueue(
    store: Any, queue: Any, probes: Callable[..., Probe]
) -> None:
    """enqueue(tx=, delay=) schedules from the moment of the enqueue, not from the start of
    the transaction."""
    probe = probes()
    with store.transaction() as tx:
        tx.execute(text("SELECT 1"))  # the transaction starts here
        time.sleep(1.0)
        queued = queue.enqueue(probe.job(n=1), delay=2.0, tx=tx)
    assert queued.id is not None
    ((ahead,),) = sql(
        store,
        "SELECT extract(epoch FROM run_at - clock_timestamp()) FROM {s}.commands WHERE id = :id",
        {"id": queued.id},
    )
    assert 1.5 < ahead <= 2.0


def test_higher_priority_runs_first_then_oldest(
    queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A worker runs ready commands by priority (highest first), then in enqueue order."""
    probe = probes()
    for n, priority in enumerate([0, 5, -3, 10, 5]):
        queue.enqueue(probe.job(n=n), priority=priority)
    drain(worker_store, concurrency=1)
    assert probe.ns == [3, 1, 4, 0, 2]


# -- enqueue_many --------------------------------------------------------------------------


def test_enqueue_many_writes_all_in_one_statement(
    twin: str, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """enqueue_many sends one statement and returns the ids in input order."""
    probe = probes()
    with statements_sent(twin) as statements:
        ids = queue.enqueue_many(
            [probe.job(n=n) for n in range(5)], queue="bulk", priority=4, max_attempts=3
        )
    assert len(statements) == 1
    assert len(ids) == 5
    assert ids == sorted(ids)
    infos = [queue.get(i) for i in ids]
    assert [json.loads(i.payload)["n"] for i in infos if i] == [0, 1, 2, 3, 4]
    assert {(i.queue, i.priority, i.max_attempts) for i in infos if i} == {("bulk", 4, 3)}
    drain(worker_store, ["bulk"], concurrency=1)
    assert probe.ns == [0, 1, 2, 3, 4]
    assert queue.enqueue_many([]) == []


def test_enqueue_many_writes_nothing_when_one_command_is_bad(
    store: Any, queue: Any, probes: Callable[..., Probe]
) -> None:
    """All commands of enqueue_many are checked first: one bad one and none is written."""
    probe = probes()
    with pytest.raises(TypeError, match="expected a Command instance"):
        queue.enqueue_many([probe.job(n=1), probe.job(n=2), "job 3"])
    with pytest.raises(ValueError, match="NUL"):
        queue.enqueue_many([probe.job(n=1), probe.job(note="nul \x00 here")])
    with pytest.raises(ValueError, match="priority"):
        queue.enqueue_many([probe.job(n=1), probe.job(n=2)], priority=2**40)
    assert count(store) == 0


# -- bad arguments, hostile names ----------------------------------------------------------


class _NotRegistered(Command, abstract=True):
    """An abstract command class: it cannot be enqueued."""

    x: int = 0


BAD_ENQUEUES: list[Any] = [
    pytest.param({"command": {"probe": "p"}}, TypeError, "expected a Command instance", id="dict"),
    pytest.param({"command": _NotRegistered()}, UnknownCommandType, "_NotRegistered", id="abst"),
    pytest.param({"delay": -0.5}, ValueError, "delay must not be negative", id="neg-delay"),
    pytest.param({"delay": 1e300}, ValueError, "delay must be from 0 to", id="huge-delay"),
    pytest.param(
        {"run_at": datetime(2030, 1, 1)},  # naive: the error under test
        ValueError,
        "run_at must be timezone-aware",
        id="naive-run-at",
    ),
    pytest.param(
        {"delay": 1, "run_at": datetime.now(UTC)}, ValueError, "not both", id="delay-and-run-at"
    ),
    pytest.param({"queue": "  "}, ValueError, "queue name must not be empty", id="blank-queue"),
    pytest.param(
        {"queue": ""},
        ValueError,
        "queue name must not be empty",
        id="empty-queue",
    ),
    pytest.param({"dedupe_key": "a\x00b"}, ValueError, "dedupe_key must not contain", id="nul-dk"),
    pytest.param({"ordering_key": "\x00"}, ValueError, "ordering_key must not", id="nul-ok"),
    pytest.param({"queue": "q\x00"}, ValueError, "queue name must not contain", id="nul-queue"),
    pytest.param({"max_attempts": 0}, ValueError, "max_attempts must be from 1", id="attempts-0"),
    pytest.param({"priority": 2**40}, ValueError, "priority must be from", id="priority"),
]


@pytest.mark.parametrize(("options", "error", "match"), BAD_ENQUEUES)
def test_bad_enqueue_raises_a_clear_error_and_writes_nothing(
    queue: Any,
    probes: Callable[..., Probe],
    options: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    """Bad commands and options raise TypeError/ValueError/UnknownCommandType; no row is written."""
    options = dict(options)
    command = options.pop("command", None) or probes().job()
    with pytest.raises(error, match=match):
        queue.enqueue(command, **options)
    assert count(queue_store(queue)) == 0


def test_names_keys_and_payloads_are_stored_as_data(
    store: Any, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Quotes, SQL and unicode in queue names, keys and payloads round-trip as plain data."""
    probe = probes()
    qname = "q'; DROP TABLE commands; -- «队列» 🚀"
    dedupe = "k'\"; SELECT pg_sleep(10); -- ключ 🔑 \\"
    ordering = "o') OR 1=1 -- ordre é"
    note = "it's \"quoted\" '); DELETE FROM commands; -- \\u0000 (literal) ∑ 🙂 \t\n"
    queued = queue.enqueue(
        probe.job(n=7, note=note), queue=qname, dedupe_key=dedupe, ordering_key=ordering
    )
    assert queued.id is not None
    info = queue.get(queued.id)
    assert info is not None
    assert (info.queue, info.dedupe_key, info.ordering_key) == (qname, dedupe, ordering)
    assert Job.model_validate_json(info.payload) == probe.job(n=7, note=note)
    assert [i.id for i in queue.list(queue=qname)] == [queued.id]
    assert queue.enqueue(probe.job(n=8), queue=qname, dedupe_key=dedupe).duplicate
    drain(worker_store, [qname])
    assert [(c.n, c.note, c.queue) for c in probe.calls] == [(7, note, qname)]
    assert count(store) == 0


# -- dedupe keys ---------------------------------------------------------------------------


def test_dedupe_key_makes_a_second_enqueue_a_no_op_while_pending(
    store: Any, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Same dedupe key while the first is pending: Enqueued(first id, duplicate=True), no row."""
    probe = probes()
    first = queue.enqueue(probe.job(n=1), dedupe_key="report:42")
    again = queue.enqueue(probe.job(n=2), dedupe_key="report:42", priority=9)
    other = queue.enqueue(probe.job(n=3), dedupe_key="report:43")
    assert first == Enqueued(first.id, duplicate=False)
    assert again == Enqueued(first.id, duplicate=True)
    assert not other.duplicate
    assert other.id != first.id
    assert count(store) == 2
    assert count(store, "dedupe_key = 'report:42' AND priority = 0") == 1
    drain(worker_store)
    assert sorted(probe.ns) == [1, 3]


def test_dedupe_holds_under_concurrent_enqueues(
    store: Any, queue: Any, probes: Callable[..., Probe]
) -> None:
    """Eight enqueues of one dedupe key at once (threads, or tasks) write exactly one command."""
    probe = probes()
    outcomes = concurrently(
        queue, "enqueue", [((probe.job(n=n),), {"dedupe_key": "once"}) for n in range(8)]
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    results: list[Enqueued] = [o for o in outcomes if isinstance(o, Enqueued)]
    assert errors == []
    assert len(results) == 8
    winners = [r for r in results if not r.duplicate]
    assert len(winners) == 1
    # A loser sees the winner's id, or None when the winner committed after its snapshot.
    assert {r.id for r in results if r.duplicate} <= {winners[0].id, None}
    assert count(store) == 1
    assert count(store, "dedupe_key = 'once'") == 1


def test_dedupe_key_is_free_again_once_the_command_started_or_finished(
    store: Any, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A dedupe key binds only not-yet-started commands: running or done ones free it."""
    go = threading.Event()
    started = threading.Event()

    def block_first(cmd: Job, ctx: CommandContext) -> None:
        if cmd.n == 1:
            started.set()
            assert go.wait(10)

    probe = probes(block_first)
    first = queue.enqueue(probe.job(n=1), dedupe_key="k")
    with running(make_worker(worker_store, concurrency=1)):
        assert started.wait(10)
        while_running = queue.enqueue(probe.job(n=2), dedupe_key="k")
        assert not while_running.duplicate
        assert while_running.id != first.id
        assert queue.enqueue(probe.job(n=3), dedupe_key="k") == Enqueued(
            while_running.id, duplicate=True
        )
        go.set()
        wait_until(lambda: count(store) == 0, "both commands to finish")
    after_done = queue.enqueue(probe.job(n=4), dedupe_key="k")
    assert not after_done.duplicate
    assert after_done.id not in (first.id, while_running.id)
    drain(worker_store)
    assert probe.ns == [1, 2, 4]
