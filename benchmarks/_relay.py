"""The relay workloads: ``relay`` (a pre-filled log into NATS JetStream, one relay) and
``relay_latency`` (append -> a JetStream-sourced projection's handler, idle relay and worker).

They need a NATS server with JetStream at ``EVENTSOURCE_BENCH_NATS`` (default
nats://127.0.0.1:4222); each run publishes to a stream of its own, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import Connection

import projections
from eventsource import NO_STREAM, EventStore, RecordedEvent
from eventsource.relay import NatsSink, RelayWorker, nats_module
from projections import JetStreamSource, Projection, handles

from . import _projections  # noqa: F401 - registered first: the order of BENCHMARKS.md
from ._harness import Bench, Run
from ._model import CounterCreated, created
from ._registry import workload

__all__ = ["LatencyProbe"]

NATS_URL = os.environ.get("EVENTSOURCE_BENCH_NATS", "nats://127.0.0.1:4222")


@contextmanager
def _stream() -> Iterator[tuple[str, str]]:
    """A fresh (stream, subject prefix), deleted afterwards."""
    token = uuid.uuid4().hex[:12]
    stream, prefix = f"BENCH_{token}", f"bench{token}"
    try:
        yield stream, prefix
    finally:
        nats = nats_module()

        async def delete() -> None:
            nc = await nats.connect(NATS_URL)
            with suppress(Exception):
                await nc.jetstream().delete_stream(stream)
            await nc.close()

        asyncio.run(delete())


@workload(
    "relay",
    default_n=100_000,
    unit="events",
    description="a pre-filled log into NATS JetStream, one relay (checkpoints after the acks)",
)
def relay(bench: Bench, n: int) -> Run:
    """Relay an ``n``-event log (10 events a stream) into a fresh JetStream stream."""
    streams = -(-n // 10)
    seeded = bench.seed(
        streams,
        lambda i: [created(i)] + [created(i) for _ in range(min(10, n - i * 10) - 1)],
        label="seeding the log",
    )
    bench.vacuum()
    with _stream() as (stream, prefix):
        sink = NatsSink(NATS_URL, stream=stream, subject_prefix=prefix)
        worker = RelayWorker(bench.store, sink)
        with bench.timed() as timer:
            worker.run(stop_when_caught_up=True)
    if worker.relayed != seeded:
        raise RuntimeError(f"relayed {worker.relayed} of {seeded} events")
    return Run(timer.seconds, seeded, {"partitions": bench.store.partitions})


class LatencyProbe(Projection):
    """Notes when each event reached its handler (by stream id)."""

    name = "bench.relay_probe"

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.changed = threading.Condition()

    @handles(CounterCreated)
    def probe(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        with self.changed:
            self.seen[record.stream_id] = time.perf_counter()
            self.changed.notify_all()


@workload(
    "relay_latency",
    default_n=500,
    unit="events",
    description="append -> JetStream-sourced handler, p50/p99, idle relay and worker",
)
def relay_latency(bench: Bench, n: int) -> Run:
    """Append ``n`` events one at a time; time each until the JetStream-sourced probe has it."""
    store = bench.store
    probe = LatencyProbe()
    read_store = EventStore.from_url(store.url, schema=store.schema, partitions=store.partitions)
    latencies: list[float] = []
    with _stream() as (stream, prefix):
        relay_worker = RelayWorker(store, NatsSink(NATS_URL, stream=stream, subject_prefix=prefix))
        source = JetStreamSource(NATS_URL, stream=stream, subject_prefix=prefix)
        proj_worker = projections.ProjectionWorker(read_store, [probe], source=source)
        threads = [
            threading.Thread(target=relay_worker.run, daemon=True),
            threading.Thread(target=proj_worker.run, daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            warm = f"{bench.run_id}-warm"
            store.append(warm, [created(0)], NO_STREAM)
            _wait(probe, warm, 60.0)
            with bench.timed() as timer:
                for i in range(n):
                    stream_id = f"{bench.run_id}-{i}"
                    start = time.perf_counter()
                    store.append(stream_id, [created(i)], NO_STREAM)
                    latencies.append(_wait(probe, stream_id, 10.0) - start)
                    time.sleep(0.005)
        finally:
            relay_worker.stop()
            proj_worker.stop()
            for thread in threads:
                thread.join(15)
            read_store.close()
    latencies.sort()
    return Run(
        timer.seconds,
        n,
        {
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        },
    )


def _wait(probe: LatencyProbe, stream_id: str, timeout: float) -> float:
    """When the probe saw ``stream_id``'s event (RuntimeError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    with probe.changed:
        while stream_id not in probe.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the probe did not see {stream_id} within {timeout}s")
            probe.changed.wait(left)
        return probe.seen[stream_id]
