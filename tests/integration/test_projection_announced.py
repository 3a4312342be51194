"""A projection worker woken by an announcement works the partitions it names at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventsource import EventStore
from eventsource._logging import get_logger
from eventsource.db import conninfo
from eventsource.runtime import Listener
from projections import ProjectionWorker
from projections._queries import projection_queries
from projections._sources import StoreSource, announced
from tests.domain import Opened
from tests.projection_domain import StreamsSeen

STOP = threading.Event()


class Seen(StreamsSeen):
    """Notes the streams it got, in memory."""

    name = "test.announced"


class CountingSource(StoreSource):
    """The store's log, counting the reads of every partition's head."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(store, projection_queries(store))
        self.head_reads = 0

    def heads(self) -> dict[int, int]:
        self.head_reads += 1
        return super().heads()


def notify(store: EventStore, payload: str) -> None:
    """Send ``payload`` on the store's channel, as the announcer does."""
    with psycopg.connect(conninfo(store.url), autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (store._queries.channel, payload))


def until(check: Any, timeout: float = 10.0) -> None:
    """Wait until ``check()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_listener_keeps_the_payloads_only_when_asked(store: EventStore) -> None:
    """Payloads come back once; a fresh LISTEN, or a listener not keeping them, says None."""
    log = get_logger("test")
    keeping = Listener(store.url, [store._queries.listen], log, keep_payloads=True)
    plain = Listener(store.url, [store._queries.listen], log)
    try:
        assert keeping.open() and plain.open()
        assert keeping.heard() == []
        notify(store, "3,1")
        assert keeping.wait(5, STOP) and plain.wait(5, STOP)
        assert keeping.heard() == ["3,1"]
        assert keeping.heard() == []
        assert plain.heard() is None
        keeping.close()
        assert keeping.wait(5, STOP)  # listening again: whatever came meanwhile is unknown
        assert keeping.heard() is None
    finally:
        keeping.close()
        plain.close()


def test_notifications_read_together_are_all_kept(store: EventStore) -> None:
    """Notifications that arrive together (one commit's) are kept, not only the first."""
    listener = Listener(store.url, [store._queries.listen], get_logger("test"), keep_payloads=True)
    try:
        assert listener.open()
        with psycopg.connect(conninfo(store.url), autocommit=True) as conn:
            channel = store._queries.channel
            conn.execute("SELECT pg_notify(%s, '1'), pg_notify(%s, '2')", (channel, channel))
        time.sleep(0.1)  # both are in the socket's buffer
        assert listener.wait(5, STOP)
        assert listener.heard() == ["1", "2"]
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("payloads", "partitions"),
    [(["3,1", "2"], {1, 2, 3}), (["3,x"], None), ([""], None), ([], None)],
)
def test_announced_partitions(
    store: EventStore, payloads: list[str], partitions: set[int] | None
) -> None:
    """The partitions of every payload; None (read every head) when one is unreadable."""
    listener = Listener(store.url, [store._queries.listen], get_logger("test"), keep_payloads=True)
    try:
        assert listener.open()
        listener.heard()
        for payload in payloads:
            notify(store, payload)
            assert listener.wait(5, STOP)
        assert announced(listener) == partitions
    finally:
        listener.close()


@pytest.fixture
def running(store: EventStore) -> Iterator[tuple[ProjectionWorker, Seen, CountingSource]]:
    """An idle worker holding every partition, polling only every minute."""
    seen = Seen()
    source = CountingSource(store)
    worker = ProjectionWorker(
        store,
        [seen],
        source=source,
        lease_ttl=120,
        heartbeat_interval=60,
        poll_interval=60,
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        until(lambda: source.head_reads > 0 and worker._groups[0].leases)
        time.sleep(0.2)  # idle, waiting
        yield worker, seen, source
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_an_announced_append_is_applied_without_reading_the_heads(
    store: EventStore, running: tuple[ProjectionWorker, Seen, CountingSource]
) -> None:
    """The announcement names the partition: the worker goes straight to its batch."""
    _, seen, source = running
    before = source.head_reads
    for n in range(5):
        store.append(f"acct-{n}", [Opened(owner="a")])
        until(lambda n=n: f"acct-{n}" in seen.streams)
    assert source.head_reads == before


def test_an_unreadable_announcement_reads_every_head(
    store: EventStore, running: tuple[ProjectionWorker, Seen, CountingSource]
) -> None:
    """A payload that is not partition numbers makes the worker read the heads."""
    _, _, source = running
    before = source.head_reads
    notify(store, "not-a-partition")
    until(lambda: source.head_reads > before)


def test_an_unannounced_append_is_found_by_the_next_poll(store: EventStore) -> None:
    """A missed announcement costs a poll, not the event: an announcement of another
    partition does not find it, the next read of the heads does."""
    seen = Seen()
    source = CountingSource(store)
    worker = ProjectionWorker(
        store, [seen], source=source, lease_ttl=120, heartbeat_interval=60, poll_interval=1.0
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        until(lambda: source.head_reads > 0 and worker._groups[0].leases)
        store._announcer.close()  # appends are no longer announced
        written = store.append("acct-x", [Opened(owner="a")])
        before = source.head_reads
        notify(store, str(written.partition + 1))  # another partition, held by the worker
        until(lambda: "acct-x" in seen.streams, timeout=5)
        assert source.head_reads > before
    finally:
        worker.stop()
        thread.join(10)
