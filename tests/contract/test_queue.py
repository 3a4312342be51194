"""The command queue's API, for both twins (the workers that run the commands are tested in
tests/integration/test_commands.py and tests/acceptance)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eventsource import (
    NO_STREAM,
    Command,
    CommandNotFound,
    Enqueued,
)
from tests.domain import Opened
from tests.integration._support import sql


class Note(Command, name="test.contract.Note"):
    text: str


class Mail(Command, name="test.contract.Mail", queue="mail", max_attempts=2):
    to: str


def _kill(store: Any, command_id: int) -> None:
    """Make a command dead, as a worker does after its last attempt (with an error)."""
    sql(
        store,
        "UPDATE {s}.commands SET status = 'dead', attempts = max_attempts,"
        " last_error = 'boom', updated_at = now() - interval '2 hours' WHERE id = :id",
        {"id": command_id},
    )


def test_enqueue_returns_ids_and_stores_the_command(queue: Any) -> None:
    """Ids increase; the stored command has its queue, type, payload and defaults."""
    first = queue.enqueue(Note(text="hello"))
    second = queue.enqueue(Note(text="again"), priority=3)
    assert isinstance(first, Enqueued)
    assert not first.duplicate
    assert second.id > first.id
    info = queue.get(first.id)
    assert (info.queue, info.command_type, info.status) == (
        "default",
        "test.contract.Note",
        "pending",
    )
    assert (info.priority, info.attempts) == (0, 0)
    assert json.loads(info.payload) == {"text": "hello"}
    assert info.run_at == info.enqueued_at
    assert [i.id for i in queue.list()] == [first.id, second.id]
    assert queue.get(second.id).priority == 3
    assert queue.get(10**12) is None


def test_the_class_and_the_call_choose_queue_and_max_attempts(queue: Any) -> None:
    """max_attempts and queue: the call's, else the class's."""
    by_class = queue.enqueue(Mail(to="ann"))
    by_call = queue.enqueue(Mail(to="bob"), queue="urgent", max_attempts=4)
    a, b = queue.get(by_class.id), queue.get(by_call.id)
    assert (a.queue, a.max_attempts) == ("mail", 2)
    assert (b.queue, b.max_attempts) == ("urgent", 4)
    assert [i.id for i in queue.list(queue="mail")] == [by_class.id]
    assert sorted(c[:3] for c in queue.counts()) == [
        ("mail", "pending", 1),
        ("urgent", "pending", 1),
    ]


def test_enqueue_many_writes_all_or_nothing(queue: Any) -> None:
    """The ids come back in input order; one bad command and none is written."""
    ids = queue.enqueue_many([Note(text=str(n)) for n in range(4)], queue="bulk", priority=2)
    assert ids == sorted(ids)
    assert [json.loads(queue.get(i).payload)["text"] for i in ids] == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="priority"):
        queue.enqueue_many([Note(text="a"), Note(text="b")], priority=2**40)
    assert len(queue.list(queue="bulk")) == 4
    assert len(queue.list()) == 4
    assert queue.enqueue_many([]) == []


def test_a_dedupe_key_makes_a_second_enqueue_a_no_op_while_pending(queue: Any) -> None:
    """The second enqueue with a pending command's dedupe key returns that command."""
    first = queue.enqueue(Note(text="a"), dedupe_key="k-1")
    second = queue.enqueue(Note(text="b"), dedupe_key="k-1")
    assert second.duplicate
    assert second.id == first.id
    other = queue.enqueue(Note(text="c"), dedupe_key="k-2")
    assert not other.duplicate
    assert len(queue.list()) == 2


def test_bad_arguments_are_refused_before_anything_is_written(queue: Any) -> None:
    """Wrong types and out-of-range values raise TypeError/ValueError naming the argument."""
    with pytest.raises(TypeError, match="Command"):
        queue.enqueue({"text": "not a command"})
    with pytest.raises(ValueError, match="queue"):
        queue.enqueue(Note(text="a"), queue="")
    with pytest.raises(ValueError, match="delay"):
        queue.enqueue(Note(text="a"), delay=1e300)
    with pytest.raises(ValueError, match="max_attempts"):
        queue.enqueue(Note(text="a"), max_attempts=0)
    assert queue.list() == []


def test_an_enqueue_in_a_transaction_commits_with_the_append(store: Any, queue: Any) -> None:
    """The command exists only if the transaction commits, together with its append."""
    with store.transaction() as tx:
        store.append("s-1", [Opened(owner="a")], NO_STREAM, tx=tx)
        kept = queue.enqueue(Note(text="kept"), tx=tx)
    assert queue.get(kept.id).status == "pending"
    with pytest.raises(RuntimeError, match="rolled back"), store.transaction() as tx:
        store.append("s-2", [Opened(owner="b")], NO_STREAM, tx=tx)
        queue.enqueue(Note(text="lost"), tx=tx)
        raise RuntimeError("rolled back")
    assert [json.loads(i.payload)["text"] for i in queue.list()] == ["kept"]
    assert store.stream_version("s-2") == 0


def test_dead_commands_are_listed_retried_and_purged(queue: Any) -> None:
    """dead() lists them with their error; retry gives attempts back; purge deletes by age."""
    retried = queue.enqueue(Note(text="retried"))
    purged = queue.enqueue(Note(text="purged"), queue="old")
    _kill(queue_store(queue), retried.id)
    _kill(queue_store(queue), purged.id)
    assert sorted(i.id for i in queue.dead()) == [retried.id, purged.id]
    assert queue.dead(queue="old")[0].last_error == "boom"
    queue.retry(retried.id, attempts=2)
    again = queue.get(retried.id)
    assert (again.status, again.max_attempts - again.attempts) == ("pending", 2)
    with pytest.raises(CommandNotFound):
        queue.retry(retried.id)  # no longer dead
    assert queue.purge(older_than=3 * 3600) == 0  # died two hours ago: too young
    assert queue.purge(older_than=3600, queue="old") == 1
    assert queue.get(purged.id) is None
    assert queue.dead() == []


def queue_store(queue: Any) -> Any:
    """The store a queue (of either twin) writes to."""
    return getattr(queue, "_target", queue).store
