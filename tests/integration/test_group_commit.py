"""Group commit on a real server: its setting, many writers with conflicts mixed in, the
statement that writes a group, and cancelled callers of the async store."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from eventsource import (
    ANY,
    NO_STREAM,
    AppendResult,
    AsyncEventStore,
    ConcurrencyError,
    EventStore,
    Settings,
)
from eventsource.store._staging import StagedAppends
from tests.domain import Deposited, Opened

from ._support import assert_dense, sql


@pytest.mark.parametrize("cls", [EventStore, AsyncEventStore], ids=lambda c: c.__name__)
def test_group_commit_setting(
    monkeypatch: pytest.MonkeyPatch, database_url: str, schema: str, cls: type[EventStore]
) -> None:
    """On by default; EVENTSOURCE_GROUP_COMMIT=false turns it off; an argument wins."""
    monkeypatch.delenv("EVENTSOURCE_GROUP_COMMIT", raising=False)
    assert cls.from_url(database_url, schema=schema).group_commit is True
    monkeypatch.setenv("EVENTSOURCE_GROUP_COMMIT", "false")
    assert Settings().group_commit is False
    assert cls.from_url(database_url, schema=schema).group_commit is False
    assert cls.from_url(database_url, schema=schema, group_commit=True).group_commit is True


def test_bad_group_commit_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """A value that is not a boolean is refused, naming the variable."""
    monkeypatch.setenv("EVENTSOURCE_GROUP_COMMIT", "sometimes")
    with pytest.raises(ValueError, match="GROUP_COMMIT"):
        EventStore.from_url(database_url)


def test_many_threads_with_conflicts_lose_and_double_nothing(store: EventStore) -> None:
    """16 threads append to a few shared streams (expected versions read just before, so
    many conflict) and to streams of their own: every append that returned is stored exactly
    once at the version it returned, every conflict wrote nothing, the log is dense."""
    shared = [f"shared-{k}" for k in range(3)]
    for stream_id in shared:
        store.append(stream_id, [Opened(owner="o")], NO_STREAM)
    returned: list[tuple[str, int, int]] = []  # (stream, version, amount)
    conflicts = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)
    lock = threading.Lock()

    def write(t: int) -> None:
        rng = random.Random(t)
        barrier.wait()
        for i in range(30):
            amount = t * 1000 + i
            if rng.random() < 0.5:
                stream_id = rng.choice(shared)
                expected = store.stream_version(stream_id)
            else:
                stream_id, expected = f"own-{t}-{i}", 0
            try:
                result = store.append(stream_id, [Deposited(amount=amount)], expected)
            except ConcurrencyError:
                with lock:
                    conflicts.append(amount)
                continue
            with lock:
                returned.append((stream_id, result.stream_version, amount))

    def run(t: int) -> None:
        try:
            write(t)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    stored = {
        (r[0], r[1]): r[2]
        for r in sql(
            store,
            "SELECT stream_id, stream_version, (data->>'amount')::int FROM {s}.events"
            " WHERE event_type = 'test.Deposited'",
        )
    }
    assert {(s, v): a for s, v, a in returned} == stored
    assert not set(conflicts) & set(stored.values())
    assert len(returned) + len(conflicts) == 16 * 30
    assert assert_dense(store) == 3 + len(returned)


def test_a_group_statement_writes_only_the_claims_that_hold(store: EventStore) -> None:
    """The append_group statement, not all-or-none: the streams whose claims hold are written
    (rows back), the others not; all-or-none: nothing at all."""
    store.append("exists", [Opened(owner="o")], NO_STREAM)
    for all_or_none, expect in ((True, set()), (False, {"fresh", "any"})):
        staged = StagedAppends()
        staged.add(
            "fresh" if not all_or_none else "fresh-2", [Opened(owner="a")], NO_STREAM, None, None
        )
        staged.add("exists", [Deposited(amount=1)], NO_STREAM, None, None)
        staged.add("any", [Opened(owner="b")], ANY, {"user": "u"}, None)
        with store._raw() as conn:
            rows = conn.execute(
                store._queries.append_group, staged.group_params(4, all_or_none=all_or_none)
            ).fetchall()
        assert {r[0] for r in rows} == expect
    assert [r.metadata for r in store.read_stream("any")] == [{"user": "u"}]
    assert [r.metadata for r in store.read_stream("fresh")] == [{}]
    assert store.stream_version("exists") == 1
    assert store.stream_version("fresh-2") == 0
    assert assert_dense(store) == 3


HOSTILE_IDS = [
    'q"uote',
    "back\\slash",
    "{brace}",
    "a,b",
    " space ",
    "NULL",
    "é😀",
    "it's",
    '\\"',
    "x'); DROP TABLE events; --",
]


def test_stream_ids_of_any_text_go_through_the_group_statement(store: EventStore) -> None:
    """The group statement gets its stream ids as an array literal: quotes, backslashes,
    braces, commas, spaces, NULL and SQL in an id are data, in one transaction's appends and
    in the groups of concurrent threads."""
    with store.transaction() as tx:
        for stream_id in HOSTILE_IDS:
            store.append(stream_id, [Opened(owner=stream_id)], NO_STREAM, tx=tx)
    start = threading.Barrier(len(HOSTILE_IDS))

    def deposit(stream_id: str) -> None:
        start.wait()
        store.append(stream_id, [Deposited(amount=len(stream_id))], 1)

    threads = [threading.Thread(target=deposit, args=(s,)) for s in HOSTILE_IDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for stream_id in HOSTILE_IDS:
        opened, deposited = store.read_stream(stream_id)
        assert (opened.stream_id, opened.event.owner) == (stream_id, stream_id)  # type: ignore[attr-defined]
        assert deposited.event.amount == len(stream_id)  # type: ignore[attr-defined]
    assert assert_dense(store) == 2 * len(HOSTILE_IDS)


async def test_cancelled_async_callers_do_not_hold_up_the_others(
    async_store: AsyncEventStore,
) -> None:
    """Tasks cancelled while their appends wait leave them out or written whole; the other
    tasks' appends are all written."""
    tasks = [
        asyncio.create_task(async_store.append(f"s-{i}", [Opened(owner=f"o{i}")], NO_STREAM))
        for i in range(30)
    ]
    await asyncio.sleep(0)  # every task has started: two write, the rest wait
    for task in tasks[5:30:3]:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    done = [o for o in outcomes if isinstance(o, AppendResult)]
    cancelled = [o for o in outcomes if isinstance(o, asyncio.CancelledError)]
    assert len(done) + len(cancelled) == 30
    assert len(done) >= 30 - len(tasks[5:30:3])
    heads = await async_store.heads()
    assert sum(heads.values()) >= len(done)
    for result in done:
        records = await async_store.read_stream(result.stream_id)
        assert [r.stream_version for r in records] == [1]
    later = await async_store.append("after", [Opened(owner="x")], NO_STREAM)
    assert later.stream_version == 1
