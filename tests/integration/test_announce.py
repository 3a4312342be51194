"""Announcements of written partitions and queues (LISTEN/NOTIFY from the announcer thread)."""

from __future__ import annotations

import time

import psycopg

from eventsource import EventStore
from eventsource.db import conninfo
from eventsource.store import MAX_PAYLOAD, Announcer, payloads


def test_payloads_stay_under_the_server_limit_and_keep_every_item() -> None:
    """Many items are split into several payloads, none of 8,000 bytes or more."""
    items = {f"queue-{i:06d}-é" for i in range(3000)}
    out = payloads(items)
    assert len(out) > 1
    assert all(len(p.encode("utf-8")) <= MAX_PAYLOAD for p in out)
    assert {item for p in out for item in p.split(",")} == items


def test_a_large_announcement_reaches_the_listener(store: EventStore) -> None:
    """An announcement of thousands of items arrives whole (it used to be refused)."""
    channel = f"test.{store.schema}.big"
    items = {f"q{i:05d}" for i in range(3000)}  # about 20 kB in one announcement
    with psycopg.connect(conninfo(store.url), autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        announcer = Announcer(conninfo(store.url), channel, store._queries.announce)
        try:
            announcer.announce(items)
            received: set[str] = set()
            deadline = time.monotonic() + 5
            while received != items and time.monotonic() < deadline:
                for note in listener.notifies(timeout=0.2, stop_after=1):
                    received.update(note.payload.split(","))
        finally:
            announcer.close()
    assert received == items


def test_an_announcer_whose_connection_was_terminated_still_delivers(store: EventStore) -> None:
    """The first announcement after the announcer's session was killed is not lost."""
    channel = f"test.{store.schema}.kill"
    with psycopg.connect(conninfo(store.url), autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        tagged = store.url.update_query_dict({"application_name": f"announce-{store.schema}"})
        announcer = Announcer(conninfo(tagged), channel, store._queries.announce)
        try:
            announcer.announce([1])
            assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["1"]
            listener.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (f"announce-{store.schema}",),
            )
            time.sleep(0.3)
            announcer.announce([2])
            assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["2"]
        finally:
            announcer.close()
