"""The projection workloads of BENCHMARKS.md: catchup (and variants), tail_latency.

The projections live here at module level so that a worker process can load them by name:
``eventsource projections run benchmarks._projections:TailProbe --schema bench_<hex>``. Their
tables go into the run's own schema (dropped with it), named by ``EVENTSOURCE_SCHEMA`` when a
worker process instantiates them without arguments.
"""

from __future__ import annotations

import collections
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy import event as sa_event

import projections
from eventsource import NO_STREAM, AppendResult, EventStore, RecordedEvent
from eventsource._internal import quote_schema
from projections import Projection, handles

from . import _workloads  # noqa: F401 - registered first: the order of BENCHMARKS.md
from ._harness import Bench, Run
from ._model import CounterCreated, CounterIncremented, created, incremented
from ._processes import log_tail, start_cli, stop
from ._registry import workload

__all__ = [
    "BatchCounterProjection",
    "CounterProjection",
    "PipelinedCounterProjection",
    "TailProbe",
    "UnpipelinedCounterProjection",
]

CATCHUP_EVENTS_PER_STREAM = 10
TAIL_PAUSE = 0.010  # seconds between two measured appends: each is measured alone
TAIL_WARMUP_TIMEOUT = 60.0  # seconds for the worker to start and catch up before measuring
TAIL_STOP_TIMEOUT = 15.0  # seconds for the worker to exit after SIGTERM


def _schema(schema: str | None) -> str:
    name = schema or os.environ.get("EVENTSOURCE_SCHEMA")
    if not name:
        raise ValueError("the benchmark projections need a schema (or EVENTSOURCE_SCHEMA)")
    return quote_schema(name)


class CounterProjection(Projection):
    """The counter projection of BENCHMARKS.md, written the straightforward way.

    One ``@handles`` method, one upsert per event: ``n = n + 1`` for the event's type (queued
    by the worker and sent with the rest of the batch's, as every projection's plain writes).
    """

    name = "bench.counter"

    def __init__(self, schema: str | None = None) -> None:
        s = _schema(schema)
        self.create = text(
            f"CREATE TABLE IF NOT EXISTS {s}.bench_counters"
            " (event_type text PRIMARY KEY, n bigint NOT NULL)"
        )
        self.upsert = text(
            f"INSERT INTO {s}.bench_counters AS c (event_type, n) VALUES (:event_type, 1)"
            " ON CONFLICT (event_type) DO UPDATE SET n = c.n + 1"
        )
        self.counts = text(f"SELECT event_type, n FROM {s}.bench_counters ORDER BY event_type")

    def setup(self, tx: Connection) -> None:
        tx.execute(self.create)

    @handles(CounterCreated, CounterIncremented)
    def count(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        tx.execute(self.upsert, {"event_type": record.event_type})


class BatchCounterProjection(CounterProjection):
    """The same read model, one upsert per batch: the batch's counts per type, summed."""

    name = "bench.counter_batch"

    def __init__(self, schema: str | None = None) -> None:
        super().__init__(schema)
        s = _schema(schema)
        self.upsert_many = text(
            f"INSERT INTO {s}.bench_counters AS c (event_type, n)"
            " SELECT * FROM unnest(CAST(:types AS text[]), CAST(:ns AS bigint[]))"
            " ON CONFLICT (event_type) DO UPDATE SET n = c.n + EXCLUDED.n"
        )
        self.types = frozenset(self.handled_types())

    def handle_batch(self, records: Sequence[RecordedEvent], tx: Connection) -> None:
        types = self.types
        counts = collections.Counter(r.event_type for r in records if r.event_type in types)
        if counts:
            tx.execute(self.upsert_many, {"types": list(counts), "ns": list(counts.values())})


class PipelinedCounterProjection(CounterProjection):
    """The per-event handlers of ``CounterProjection`` with ``pipelined = True`` spelled out.

    Pipelining is the default now, so this measures what ``CounterProjection`` does; it stays
    so that ``catchup_pipeline`` compares with its figures from before.
    """

    name = "bench.counter_pipeline"
    pipelined = True


class UnpipelinedCounterProjection(CounterProjection):
    """The per-event handlers of ``CounterProjection`` with ``pipelined = False``: every upsert
    is sent and waited for when it is executed (one round trip per event)."""

    name = "bench.counter_unpipelined"
    pipelined = False


class TailProbe(Projection):
    """Stores, for every event it applies, the worker's wall clock when its handler ran.

    With ``BENCH_TAIL_COMMITS`` set to a file name, it also appends a line ``partition
    position handler_time committed_time`` there once the batch's transaction has committed
    (stamped when the worker hands the connection back to the pool, right after the commit),
    so the benchmark can tell the handler's time from the moment the read model is visible.
    """

    name = "bench.tail_probe"

    def __init__(self, schema: str | None = None) -> None:
        s = _schema(schema)
        self.create = text(
            f"CREATE TABLE IF NOT EXISTS {s}.bench_tail_probe (partition integer NOT NULL,"
            " position bigint NOT NULL, applied double precision NOT NULL,"
            " PRIMARY KEY (partition, position))"
        )
        self.insert = text(
            f"INSERT INTO {s}.bench_tail_probe (partition, position, applied)"
            " VALUES (:partition, :position, :applied)"
        )
        self.select = text(f"SELECT partition, position, applied FROM {s}.bench_tail_probe")
        self._commits_path = os.environ.get("BENCH_TAIL_COMMITS")
        self._commits: Any = None
        self._handled: list[tuple[int, int, float]] = []  # in the open transaction
        self._committing: list[tuple[int, int, float]] = []  # its commit was sent

    def setup(self, tx: Connection) -> None:
        tx.execute(self.create)
        if self._commits_path and self._commits is None:
            self._commits = open(self._commits_path, "a", buffering=1)  # noqa: SIM115
            sa_event.listen(tx.engine, "commit", self._on_commit)
            sa_event.listen(tx.engine, "rollback", self._on_rollback)
            sa_event.listen(tx.engine, "checkin", self._on_checkin)

    def _on_commit(self, conn: Any) -> None:
        self._committing, self._handled = self._handled, []

    def _on_rollback(self, conn: Any) -> None:
        self._handled, self._committing = [], []

    def _on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        if self._committing:
            now = time.time()
            lines = "".join(f"{p} {pos} {at!r} {now!r}\n" for p, pos, at in self._committing)
            self._committing = []
            self._commits.write(lines)

    @handles(CounterCreated, CounterIncremented)
    def probe(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        applied = time.time()  # first thing: the handler has the event in hand
        tx.execute(
            self.insert,
            {"partition": record.partition, "position": record.position, "applied": applied},
        )
        self._handled.append((record.partition, record.position, applied))


# -- catchup ---------------------------------------------------------------------------------


def _seed_log(bench: Bench, n: int) -> tuple[int, dict[str, int]]:
    """An n-event log (10 events a stream, 1,000 a transaction), vacuumed; counts per type."""
    per_stream = CATCHUP_EVENTS_PER_STREAM
    streams = -(-n // per_stream)
    expected: collections.Counter[str] = collections.Counter()

    def history(i: int) -> list[Any]:
        count = min(per_stream, n - i * per_stream)
        events = [created(i), *(incremented(total) for total in range(1, count))]
        expected.update(type(e).event_type for e in events)
        return events

    seeded = bench.seed(streams, history, streams_per_tx=100, label="seeding the log")
    bench.vacuum()
    return seeded, dict(expected)


def _round_trip_us(store: EventStore, count: int = 2000) -> float:
    """Microseconds of one synchronous ``SELECT 1`` on a pooled connection (the floor of a
    handler that waits for one statement per event)."""
    with store._raw() as conn, conn.cursor() as cursor:
        for _ in range(100):  # prepared, warm
            cursor.execute("SELECT 1")
        start = time.perf_counter()
        for _ in range(count):
            cursor.execute("SELECT 1")
        return round((time.perf_counter() - start) / count * 1e6, 1)


def _catchup(bench: Bench, n: int, projection: CounterProjection, handler: str) -> Run:
    seeded, expected = _seed_log(bench, n)
    store = bench.store
    round_trip = _round_trip_us(store)
    with bench.timed() as timer:
        worker = projections.run(store, [projection], stop_when_caught_up=True)
    with store.engine.connect() as conn:
        counts = {t: int(c) for t, c in conn.execute(projection.counts)}
    if sum(counts.values()) != seeded or counts != expected:
        raise RuntimeError(
            f"{projection.name}: counters {counts} (sum {sum(counts.values())}) do not match the"
            f" {seeded} events written ({expected})"
        )
    failed = [p for g in worker._groups for p, lease in g.leases.items() if lease.failed]
    if failed:
        raise RuntimeError(f"{projection.name}: partitions {failed} stopped on errors")
    return Run(
        timer.seconds,
        seeded,
        {
            "handler": handler,
            "batch_size": projection.batch_size,
            "partitions": store.partitions,
            "per_event_us": round(timer.seconds / seeded * 1e6, 1),
            "round_trip_us": round_trip,
        },
    )


def _catchup_workload(
    name: str, projection: type[CounterProjection], handler: str, description: str
) -> None:
    """Register ``name``: ``projection`` caught up on a fresh log (``handler`` in its figures)."""

    @workload(name, default_n=100_000, min_n=100_000, unit="events", description=description)
    def run(bench: Bench, n: int) -> Run:
        return _catchup(bench, n, projection(bench.store.schema), handler)


_catchup_workload(
    "catchup",
    CounterProjection,
    "per-event @handles",
    "a new counter projection (one upsert per event, @handles) from offset 0 to the head of an"
    " N-event log (>= 100,000), one worker in this process",
)
_catchup_workload(
    "catchup_batch",
    BatchCounterProjection,
    "handle_batch",
    "as catchup, but handle_batch: one upsert of the batch's counts per type per batch",
)
_catchup_workload(
    "catchup_pipeline",
    PipelinedCounterProjection,
    "per-event @handles, pipelined",
    "as catchup (one upsert per event, @handles), with pipelined = True spelled out (the default)",
)
_catchup_workload(
    "catchup_unpipelined",
    UnpipelinedCounterProjection,
    "per-event @handles, not pipelined",
    "as catchup (one upsert per event, @handles), with pipelined = False: one round trip per"
    " upsert",
)


# -- tail_latency ----------------------------------------------------------------------------


def _worker_process(store: EventStore, log: Any, commits: Path) -> subprocess.Popen[bytes]:
    """``eventsource projections run benchmarks._projections:TailProbe`` on the run's schema."""
    args = ["projections", "run", f"{__name__}:TailProbe"]
    return start_cli(store, args, log, {"BENCH_TAIL_COMMITS": str(commits)})


def _wait_applied(
    store: EventStore, last: dict[int, AppendResult], proc: subprocess.Popen[bytes], log: Any
) -> None:
    """Until the worker has applied the last append of every partition (or it died)."""
    deadline = time.monotonic() + TAIL_WARMUP_TIMEOUT
    for result in last.values():
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the projection worker exited with {proc.returncode}:\n{log_tail(log)}"
                )
            try:
                projections.wait_for(store, TailProbe.name, result, timeout=0.5)
                break
            except projections.ProjectionTimeout:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the projection worker did not catch up within {TAIL_WARMUP_TIMEOUT}s:"
                        f"\n{log_tail(log)}"
                    ) from None


def _p99(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@workload(
    "tail_latency",
    default_n=1000,
    unit="appends",
    description=(
        "commit of a single append -> a projection worker process has applied it (handler);"
        f" N appends {TAIL_PAUSE * 1000:.0f} ms apart, p50/p99/max"
    ),
)
def tail_latency(bench: Bench, n: int) -> Run:
    store = bench.store
    partitions = store.partitions
    with tempfile.TemporaryDirectory(prefix="bench-tail-") as scratch:
        commits = Path(scratch) / "commits.txt"
        with open(Path(scratch) / "worker.log", "w+b") as log:
            proc = _worker_process(store, log, commits)
            try:
                # Warm-up (untimed): one event in every partition, applied by the worker, so
                # it is up, holds every lease and is idle on LISTEN when measuring starts.
                warm: dict[int, AppendResult] = {}
                i = 0
                while len(warm) < partitions:
                    result = store.append(bench.stream_id(-1 - i), [created(i)], NO_STREAM)
                    assert isinstance(result, AppendResult)
                    warm[result.partition] = result
                    i += 1
                _wait_applied(store, warm, proc, log)
                time.sleep(0.5)

                committed: dict[tuple[int, int], float] = {}
                last: dict[int, Any] = {}
                events = [created(k) for k in range(n)]
                ids = [bench.stream_id(k) for k in range(n)]
                with bench.timed() as timer:
                    for stream_id, event in zip(ids, events, strict=True):
                        result = store.append(stream_id, [event], NO_STREAM)
                        committed[(result.partition, result.position)] = time.time()
                        last[result.partition] = result
                        time.sleep(TAIL_PAUSE)
                _wait_applied(store, last, proc, log)
            finally:
                stop(proc, log, TAIL_STOP_TIMEOUT, "projection worker")
        visible: dict[tuple[int, int], float] = {}
        if commits.exists():
            for line in commits.read_text().splitlines():
                p, pos, _, at = line.split()
                visible[(int(p), int(pos))] = float(at)
    with store.engine.connect() as conn:
        applied = {(p, pos): t for p, pos, t in conn.execute(TailProbe(store.schema).select)}
    missing = [key for key in committed if key not in applied or key not in visible]
    if missing:
        raise RuntimeError(f"{len(missing)} appends were never applied, e.g. {missing[:3]}")
    handled = sorted(applied[key] - at for key, at in committed.items())
    seen = sorted(visible[key] - at for key, at in committed.items())
    return Run(
        timer.seconds,
        n,
        {
            "p50_ms": _ms(statistics.median(handled)),
            "p99_ms": _ms(_p99(handled)),
            "max_ms": _ms(handled[-1]),
            "mean_ms": _ms(statistics.fmean(handled)),
            "committed_p50_ms": _ms(statistics.median(seen)),
            "committed_p99_ms": _ms(_p99(seen)),
            "committed_max_ms": _ms(seen[-1]),
            "pause_ms": round(TAIL_PAUSE * 1000, 1),
            "worker_exit": proc.returncode,
        },
    )
