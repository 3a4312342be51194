"""Concurrent writers and readers: optimistic retries converge, positions stay dense and ordered."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from eventsource import ConcurrencyError, EventStore, Repository
from tests.domain import Counter, Deposited, Opened

from ._support import assert_dense


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run target(i) in `count` threads started together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]


def test_read_modify_save_with_retries_loses_no_update(store: EventStore) -> None:
    """8 threads x 25 retried increments on one aggregate give exactly 200, versions dense."""
    repo = Repository(store, Counter)
    counter = Counter("hot")
    counter.open("ann")
    repo.save(counter)
    conflicts = []

    def increment(_: int) -> None:
        for _ in range(25):
            while True:
                current = repo.load("hot")
                current.add(1)
                try:
                    repo.save(current)
                    break
                except ConcurrencyError:
                    conflicts.append(1)

    run_threads(8, increment)
    final = repo.load("hot")
    assert final.total == 200
    assert final.version == 201
    assert [r.stream_version for r in store.read_stream("hot")] == list(range(1, 202))
    assert assert_dense(store) == 201
    assert conflicts  # the threads really did race


def test_concurrent_appends_keep_partitions_dense(store: EventStore) -> None:
    """Parallel single and multi-stream appends leave every partition dense, no event lost."""
    per_thread = 20

    def write(i: int) -> None:
        rng = random.Random(i)
        for n in range(per_thread):
            if n % 4 == 0:
                with store.transaction() as tx:
                    for k in range(3):
                        store.append(f"w{i}-tx{n}-{k}", [Opened(owner="x")], tx=tx)
            else:
                stream = f"w{i}-{rng.randint(0, 5)}"
                store.append(stream, [Deposited(amount=n), Deposited(amount=n + 1)])

    run_threads(8, write)
    expected = 8 * (per_thread // 4 * 3 + (per_thread - per_thread // 4) * 2)
    assert assert_dense(store) == expected


def test_readers_never_see_a_hole(store: EventStore) -> None:
    """While writers append, each read of a partition continues exactly at the last position."""
    stop = threading.Event()
    violations: list[str] = []
    seen = dict.fromkeys(range(store.partitions), 0)

    def read() -> None:
        while not stop.is_set() or any(seen[p] < h for p, h in store.heads().items()):
            for partition in seen:
                page = store.read_partition(partition, after=seen[partition], limit=500)
                positions = [r.position for r in page]
                wanted = list(range(seen[partition] + 1, seen[partition] + 1 + len(page)))
                if positions != wanted:
                    violations.append(
                        f"partition {partition}: {positions[:5]} after {seen[partition]}"
                    )
                    return
                if page:
                    seen[partition] = positions[-1]

    def write(i: int) -> None:
        for n in range(25):
            if n % 5 == 0:
                with store.transaction() as tx:
                    store.append(f"r{i}-a{n}", [Opened(owner="x")], tx=tx)
                    store.append(f"r{i}-b{n}", [Opened(owner="y")], tx=tx)
                    tx.flush()
                    time.sleep(0.002)  # hold the heads a little, as slow transactions do
            else:
                store.append(f"r{i}-{n % 3}", [Deposited(amount=n)])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        run_threads(6, write)
    finally:
        stop.set()
        reader.join(timeout=60)
    assert violations == []
    assert seen == store.heads()
    assert sum(seen.values()) == assert_dense(store)
