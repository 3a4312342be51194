"""The ordering contract, end to end: concurrent writer processes, tailing reader processes.

Within a partition, positions are dense and become visible in position order, so a reader that
has seen position p never later finds an event at a position <= p; per-stream order follows the
stream version; writers to different partitions never wait for each other.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eventsource import AppendResult, EventStore, RecordedEvent, partition_for
from tests.domain import Deposited, Opened

from ._support import helper_command, helper_env, scalar

WRITERS = 4
OPS_PER_WRITER = 250
SHARED_STREAMS = 24
READER_LIMITS = (500, 7)  # one reader takes whole batches, one crawls in small steps


@pytest.fixture
def make_store(database_url: str, schema: str) -> Iterator[Callable[[int], EventStore]]:
    """A factory for an upgraded store in the fresh schema, with a chosen partition count."""
    stores: list[EventStore] = []

    def make(partitions: int) -> EventStore:
        store = EventStore.from_url(database_url, schema=schema, partitions=partitions)
        store.upgrade()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def _read_log(store: EventStore) -> dict[int, list[RecordedEvent]]:
    return {p: store.read_partition(p, after=0, limit=10**7) for p in range(store.partitions)}


def _first_difference(seen: list[tuple[int, str]], final: list[tuple[int, str]]) -> str:
    for i, (a, b) in enumerate(zip(seen, final, strict=False)):
        if a != b:
            return f"at index {i}: the reader saw {a}, the log holds {b}; seen[i-3:i+3]=" + str(
                seen[max(0, i - 3) : i + 3]
            )
    return f"the reader saw {len(seen)} events, the log holds {len(final)}"


def _stop(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _run_processes(
    database_url: str, schema: str, tmp_path: Path, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Start the readers, then the writers; stop the readers when the writers are done."""
    env = helper_env()
    processes: list[subprocess.Popen[str]] = []
    readers, writers = [], []
    try:
        for i, limit in enumerate(READER_LIMITS):
            out = tmp_path / f"reader{i}.json"
            reader = subprocess.Popen(
                helper_command("_reader", database_url, schema, str(limit), str(out)),
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            processes.append(reader)
            readers.append((reader, out))
        for reader, _ in readers:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "ready", reader.communicate()[1]

        for w in range(WRITERS):
            out = tmp_path / f"writer{w}.json"
            args = [str(w), str(OPS_PER_WRITER), str(seed + w), str(SHARED_STREAMS), str(out)]
            writer = subprocess.Popen(
                helper_command("_writer", database_url, schema, *args),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            processes.append(writer)
            writers.append((writer, out))
        for writer, _ in writers:
            stdout, stderr = writer.communicate(timeout=120)
            assert writer.returncode == 0, f"writer failed:\n{stdout}\n{stderr}"
        for reader, _ in readers:
            _, stderr = reader.communicate(timeout=60)  # closes stdin: the reader stops
            assert reader.returncode == 0, f"reader failed:\n{stderr}"
    finally:
        _stop(processes)
    return (
        [json.loads(out.read_text()) for _, out in writers],
        [json.loads(out.read_text()) for _, out in readers],
    )


def _check_committed(written: list[dict[str, Any]], log: dict[int, list[RecordedEvent]]) -> None:
    """Every committed append is in the log where its result said; nothing else is."""
    by_id = {str(rec.event_id): rec for records in log.values() for rec in records}
    committed_per_partition: dict[int, int] = defaultdict(int)
    for report in written:
        for append in report["committed"]:
            count = len(append["event_ids"])
            committed_per_partition[append["partition"]] += count
            for k, event_id in enumerate(append["event_ids"]):
                back = count - 1 - k
                rec = by_id.get(event_id)
                assert rec is not None, f"committed event {event_id} of {append} is not in the log"
                where = (rec.stream_id, rec.partition, rec.position, rec.stream_version)
                expected = (
                    append["stream_id"],
                    append["partition"],
                    append["position"] - back,
                    append["stream_version"] - back,
                )
                assert where == expected, f"event {k} of {append}"
        for event_id in report["discarded"]:
            assert event_id not in by_id, f"a rolled-back or refused event was stored: {event_id}"
        for retry in report["retries"]:
            assert retry["retry"]["duplicate"], retry
            assert {**retry["retry"], "duplicate": False} == retry["original"], retry
    assert dict(committed_per_partition) == {p: len(r) for p, r in log.items() if r}
    assert sum(len(report["discarded"]) for report in written) > 0  # rollbacks always discard


# Three rounds: (writer seed, partition count). Two partitions maximise contention on the heads.
ROUNDS = [(1000, 2), (2000, 2), (3000, 4)]


@pytest.mark.parametrize("round_", ROUNDS, ids=[f"round{i + 1}" for i in range(len(ROUNDS))])
def test_tailing_readers_see_every_partition_dense_and_in_order(
    make_store: Callable[[int], EventStore],
    database_url: str,
    schema: str,
    tmp_path: Path,
    round_: tuple[int, int],
) -> None:
    """Readers tailing while 4 processes append see positions 1, 2, 3, … with no skip or repeat."""
    seed, partitions = round_
    store = make_store(partitions)
    written, observed = _run_processes(database_url, schema, tmp_path, seed)
    log = _read_log(store)
    heads = store.heads()

    # Dense positions, and a head that counts exactly the events of its partition.
    for p, records in log.items():
        assert [r.position for r in records] == list(range(1, len(records) + 1)), f"partition {p}"
        assert heads[p] == len(records), f"partition {p}: head {heads[p]}, {len(records)} events"

    # Each reader saw exactly the log, in position order: no skip, no repeat, no late arrival.
    for r, seen in enumerate(observed):
        assert seen["live_batches"] > 20, f"reader {r} hardly saw the writers at work: {seen}"
        for p, records in log.items():
            final = [(rec.position, str(rec.event_id)) for rec in records]
            pairs = [tuple(pair) for pair in seen["seen"][str(p)]]
            assert pairs == final, f"reader {r}, partition {p}: " + _first_difference(pairs, final)

    _check_committed(written, log)

    # Per stream: one partition (the documented hash), versions 1..n in position order.
    streams: dict[str, list[RecordedEvent]] = defaultdict(list)
    for records in log.values():
        for rec in records:
            streams[rec.stream_id].append(rec)
    assert len(streams) > SHARED_STREAMS
    for stream_id, records in streams.items():
        assert {rec.partition for rec in records} == {partition_for(stream_id, partitions)}
        assert [rec.stream_version for rec in records] == list(range(1, len(records) + 1))
        assert store.stream_version(stream_id) == len(records)


class _Call:
    """Run a call in a thread; ``done`` is set when it returns or raises."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at = 0.0

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:  # reported by the test, not by the thread
                self.error = exc
            self.finished_at = time.monotonic()
            self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()


def _streams_in(partition: int, partitions: int, count: int, prefix: str) -> list[str]:
    names = (f"{prefix}-{i}" for i in range(10_000))
    found = [s for s in names if partition_for(s, partitions) == partition]
    return found[:count]


def _lock_waiters(database_url: str, schema: str) -> object:
    return scalar(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        f" AND query LIKE '%{schema}%'",
    )


def test_writers_to_different_partitions_never_wait_for_each_other(
    store: EventStore, database_url: str, schema: str
) -> None:
    """An open append holds only its partition: B appends at once, A waits until the commit."""
    a, b = 0, 1
    a_first, a_second = _streams_in(a, store.partitions, 2, "a")
    (b_stream,) = _streams_in(b, store.partitions, 1, "b")

    with store.transaction() as tx:
        first = store.append(a_first, [Opened(owner="first")], tx=tx)
        tx.flush()  # partition A's head is now locked until this transaction ends
        assert (first.partition, first.position) == (a, 1)

        other = _Call(lambda: store.append(b_stream, [Opened(owner="b")]))
        assert other.done.wait(5), "an append to another partition waited for the open one"
        assert other.error is None, other.error
        assert isinstance(other.result, AppendResult)
        assert (other.result.partition, other.result.position) == (b, 1)
        assert [r.stream_id for r in store.read_partition(b)] == [b_stream]

        # Readers neither wait nor see the uncommitted append.
        assert store.read_partition(a) == []
        assert store.heads()[a] == 0

        same = _Call(lambda: store.append(a_second, [Opened(owner="second")]))
        assert not same.done.wait(0.5), "an append to the locked partition did not wait"
        assert _lock_waiters(database_url, schema) == 1
        before_commit = time.monotonic()

    assert same.done.wait(10), "the waiting append did not finish after the commit"
    assert same.error is None, same.error
    assert same.finished_at >= before_commit
    assert (same.result.partition, same.result.position) == (a, 2)
    assert [(r.stream_id, r.position) for r in store.read_partition(a)] == [
        (a_first, 1),
        (a_second, 2),
    ]
    assert store.heads() == {0: 2, 1: 1, 2: 0, 3: 0}


def test_a_rolled_back_append_leaves_no_hole(store: EventStore) -> None:
    """An append rolled back after taking positions gives them back: the next one reuses them."""
    (stream_id, other_id) = _streams_in(0, store.partitions, 2, "r")

    class Abort(Exception):
        """Raised to roll the transaction back."""

    with pytest.raises(Abort), store.transaction() as tx:
        pending = store.append(stream_id, [Opened(owner="x"), Deposited(amount=1)], tx=tx)
        tx.flush()
        assert pending.position == 2
        raise Abort

    result = store.append(other_id, [Opened(owner="y")])
    assert (result.partition, result.position) == (0, 1)
    assert store.heads()[0] == 1
    assert store.stream_version(stream_id) == 0
    assert [(r.stream_id, r.position) for r in store.read_partition(0)] == [(other_id, 1)]
