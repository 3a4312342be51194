"""The standard workloads of BENCHMARKS.md: create, command, concurrent, batch, replay."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import Any

from eventsource import NO_STREAM, Repository

from ._harness import Bench, Run
from ._model import Counter, created, incremented
from ._registry import workload

__all__: list[str] = []

CONCURRENT_WRITERS = 8
BATCH_SIZE = 100  # streams (one event each) per transaction in `batch`
PAGE_SIZE = 1000  # read_partition limit in `replay`
REPLAY_EVENTS_PER_STREAM = 10


@workload(
    "create",
    default_n=5000,
    unit="aggregates",
    description="N new aggregates, 1 event each, one transaction each, one writer",
)
def create(bench: Bench, n: int) -> Run:
    repo = Repository(bench.store, Counter)
    ids = [bench.stream_id(i) for i in range(n)]
    with bench.timed() as timer:
        for i, stream_id in enumerate(ids):
            counter = Counter(stream_id)
            counter.create(f"counter-{i:08d}", "bench-owner", 1_000_000)
            repo.save(counter)
    return Run(timer.seconds, n)


@workload(
    "command",
    default_n=5000,
    unit="commands",
    description="N times: load an existing aggregate, record 1 event, save (one writer)",
)
def command(bench: Bench, n: int) -> Run:
    bench.seed(n, lambda i: [created(i)], label="seeding aggregates")
    repo = Repository(bench.store, Counter)
    ids = [bench.stream_id(i) for i in range(n)]
    with bench.timed() as timer:
        for stream_id in ids:
            counter = repo.load(stream_id)
            counter.increment()
            repo.save(counter)
    return Run(timer.seconds, n)


@workload(
    "concurrent",
    default_n=5000,
    unit="aggregates",
    pool_size=CONCURRENT_WRITERS,
    description=f"{CONCURRENT_WRITERS} writer threads, N new aggregates in all, 1 event each",
)
def concurrent(bench: Bench, n: int) -> Run:
    repo = Repository(bench.store, Counter)
    ids = [bench.stream_id(i) for i in range(n)]
    start = threading.Barrier(CONCURRENT_WRITERS + 1)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        mine = ids[k::CONCURRENT_WRITERS]
        start.wait()
        try:
            for stream_id in mine:
                counter = Counter(stream_id)
                counter.create(stream_id, "bench-owner", 1_000_000)
                repo.save(counter)
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [
        threading.Thread(target=writer, args=(k,), name=f"bench-writer-{k}")
        for k in range(CONCURRENT_WRITERS)
    ]
    for thread in threads:
        thread.start()
    # Open the pool's connections now, so connection set-up is not timed.
    with ExitStack() as stack:
        for _ in range(CONCURRENT_WRITERS):
            stack.enter_context(bench.store.engine.connect())
    with bench.timed() as timer:
        start.wait()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return Run(timer.seconds, n, {"writers": CONCURRENT_WRITERS})


@workload(
    "batch",
    default_n=50_000,
    unit="events",
    description=f"N events in transactions of {BATCH_SIZE} new streams (1 event each)",
)
def batch(bench: Bench, n: int) -> Run:
    store = bench.store
    ids = [bench.stream_id(i) for i in range(n)]
    with bench.timed() as timer:
        for begin in range(0, n, BATCH_SIZE):
            with store.transaction() as tx:
                for i in range(begin, min(begin + BATCH_SIZE, n)):
                    store.append(ids[i], [created(i)], NO_STREAM, tx=tx)
    return Run(timer.seconds, n, {"per_tx": BATCH_SIZE})


@workload(
    "replay",
    default_n=100_000,
    min_n=100_000,
    unit="events",
    description=(
        "read every event of an N-event log (>= 100,000) partition by partition"
        f" (iter_partition, pages of {PAGE_SIZE}) and decode each to its model"
    ),
)
def replay(bench: Bench, n: int) -> Run:
    per_stream = REPLAY_EVENTS_PER_STREAM
    streams = -(-n // per_stream)

    def history(i: int) -> list[Any]:
        count = min(per_stream, n - i * per_stream)
        return [created(i), *(incremented(total) for total in range(1, count))]

    seeded = bench.seed(streams, history, streams_per_tx=100, label="seeding the log")
    bench.vacuum()
    store = bench.store
    count = 0
    with bench.timed() as timer:
        for partition in range(store.partitions):
            for record in store.iter_partition(partition, batch=PAGE_SIZE):
                _ = record.event
                count += 1
    if count != seeded:
        raise RuntimeError(f"replay read {count} events of the {seeded} written")
    return Run(timer.seconds, count, {"partitions": store.partitions, "page": PAGE_SIZE})
