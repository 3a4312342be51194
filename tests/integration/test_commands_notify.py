"""How an enqueue announces its queue: after a quiet spell, in its own statement at its commit;
within a burst, through the store's announcer after the commit.

The store's announcer is closed in these tests (it then drops what it is given), so that a
notification heard on the channel can only come from the enqueue's own statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventsource import CommandQueue, EventStore
from eventsource.commands import command_queries
from eventsource.db import connect

from ._probes import Job, count


@pytest.fixture
def listening(store: EventStore) -> Iterator[psycopg.Connection[Any]]:
    """A connection that LISTENs on the store's command channel."""
    conn = connect(store.url)
    try:
        conn.execute(command_queries(store.schema).listen)
        yield conn
    finally:
        conn.close()


def heard(conn: psycopg.Connection[Any], timeout: float) -> list[tuple[str, str]]:
    """The (channel, payload) of the notifications that arrive within ``timeout`` seconds."""
    return [(n.channel, n.payload) for n in conn.notifies(timeout=timeout)]


def test_an_enqueue_after_a_quiet_spell_announces_its_queue_when_it_commits(
    store: EventStore, listening: psycopg.Connection[Any]
) -> None:
    """The first plain enqueue after a quiet spell carries its own NOTIFY: heard without the
    announcer, and only once the command can be seen."""
    store._announcer.close()
    queue = CommandQueue(store)
    queue.enqueue(Job(probe="p", n=1), queue="mail")
    notifications = heard(listening, timeout=5.0)
    assert notifications == [(command_queries(store.schema).channel, "mail")]
    assert count(store) == 1


def test_enqueues_within_a_burst_leave_the_announcement_to_the_announcer(
    store: EventStore, listening: psycopg.Connection[Any]
) -> None:
    """An enqueue soon after one that announced itself sends no NOTIFY of its own: with the
    announcer closed, nothing more is heard."""
    store._announcer.close()
    queue = CommandQueue(store)
    queue.enqueue(Job(probe="p", n=1))
    assert len(heard(listening, timeout=5.0)) == 1
    queue._notified_at += 3600.0  # the spell is not over
    queue.enqueue(Job(probe="p", n=2))
    assert heard(listening, timeout=0.5) == []
    assert count(store) == 2


def test_an_enqueue_with_a_dedupe_key_is_announced_by_the_announcer(
    store: EventStore, listening: psycopg.Connection[Any]
) -> None:
    """Only the plain enqueue announces itself; a deduped one is announced after its commit."""
    queue = CommandQueue(store)
    queue.enqueue(Job(probe="p", n=1), dedupe_key="k")
    assert heard(listening, timeout=5.0) == [(command_queries(store.schema).channel, "default")]
    assert count(store) == 1
