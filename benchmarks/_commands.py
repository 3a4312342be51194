"""The command-queue workloads of BENCHMARKS.md: enqueue, drain, queue_latency.

``drain`` and ``queue_latency`` run the worker as its own process, as in production::

    python -m eventsource worker run benchmarks._command_handlers --queue bench \\
        --concurrency C --schema bench_<hex>

with ``EVENTSOURCE_DATABASE_URL`` set. The process is started first and waited for: its
connections open (``PGAPPNAME`` tags them in ``pg_stat_activity``), its LISTEN issued, a few
warm-up commands handled, then a quiet moment, so it is ready and idle when measuring starts.
"""

from __future__ import annotations

import gc
import json
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from eventsource import CommandQueue, EventStore
from eventsource._queries import quote_schema

from . import _projections  # noqa: F401 - registered first: the order of BENCHMARKS.md
from ._command_handlers import PROBES_ENV, QUEUE, BenchNoop, BenchProbe
from ._harness import Bench, Run, fresh_store
from ._processes import log_tail, start_cli, stop
from ._projections import _ms, _p99
from ._registry import workload

__all__: list[str] = []

HANDLERS = "benchmarks._command_handlers"
DRAIN_CONCURRENCIES = (1, 2, 4)  # worker slots tried by `drain`, each in a fresh schema
DRAIN_DEFAULT = 4  # the headline figure: `eventsource worker run`'s default concurrency
DRAIN_POLL = 0.005  # seconds between two counts of the commands table while draining
LATENCY_PAUSE = 0.010  # seconds between two measured enqueues: the worker is idle for each
LATENCY_CONCURRENCY = 4  # `eventsource worker run`'s default
WARMUP_COMMANDS = 20  # handled by a new worker before measuring (imports, prepared statements)
READY_TIMEOUT = 60.0  # seconds for a worker process to connect, listen and handle the warm-up
STOP_TIMEOUT = 15.0  # seconds for the worker to exit after SIGTERM


def _noop(run_id: str, i: int) -> BenchNoop:
    return BenchNoop(account_id=f"bench-{run_id}-{i:08d}", amount=100 + i % 900, i=i)


def _probe(run_id: str, i: int) -> BenchProbe:
    return BenchProbe(account_id=f"bench-{run_id}-{i:08d}", amount=100 + i % 900, i=i)


# -- the worker process ----------------------------------------------------------------------


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    app_name: str  # its connections' application_name
    concurrency: int
    processed: int | None = None  # attempts it finished, from its "worker stopped" log line

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"the command worker exited with {self.proc.returncode}:\n{log_tail(self.log)}"
            )


@contextmanager
def worker_process(
    store: EventStore, *, concurrency: int, scratch: Path, env: dict[str, str] | None = None
) -> Iterator[Worker]:
    """A ready, idle ``eventsource worker run`` process on the store's schema; SIGTERM after."""
    app_name = f"bench-worker-{secrets.token_hex(4)}"
    environ = {
        **(env or {}),
        "PGAPPNAME": app_name,  # libpq's default application_name: find its connections
        "EVENTSOURCE_LOG_FORMAT": "json",  # its "worker stopped" line says how many it ran
        "EVENTSOURCE_LOG_LEVEL": "info",
    }
    args = ["worker", "run", HANDLERS, "--queue", QUEUE, "--concurrency", str(concurrency)]
    with open(scratch / f"worker-c{concurrency}.log", "w+b") as log:
        worker = Worker(start_cli(store, args, log, environ), log, app_name, concurrency)
        try:
            _wait_ready(store, worker)
            yield worker
            worker.check()
        finally:
            stop(worker.proc, worker.log, STOP_TIMEOUT, "command worker")
            worker.processed = _processed(worker.log)


def _processed(log: IO[bytes]) -> int | None:
    """``processed`` of the worker's last "worker stopped" log line, if any."""
    found = None
    log.flush()
    log.seek(0)
    for line in log.read().decode(errors="replace").splitlines():
        if '"worker stopped"' in line:
            try:
                found = int(json.loads(line)["processed"])
            except (ValueError, KeyError, TypeError):
                continue
    return found


def _check_processed(worker: Worker, n: int, what: str) -> None:
    """The worker ran the warm-up and the N commands, each once (no retries, no failures)."""
    expected = WARMUP_COMMANDS + n
    if worker.processed != expected:
        raise RuntimeError(
            f"{what}: the worker finished {worker.processed} attempts, expected {expected}"
            f" (warm-up {WARMUP_COMMANDS} + {n}):\n{log_tail(worker.log)}"
        )


def _wait_ready(store: EventStore, worker: Worker) -> None:
    """Until the worker has its slots' connections and its LISTEN, and has run a warm-up."""
    listen = store._command_queries.listen
    deadline = time.monotonic() + READY_TIMEOUT
    # The slots' connections, the heartbeat's and the listener (which ends on its LISTEN).
    while True:
        worker.check()
        rows = _rows(
            store,
            "SELECT count(*), count(*) FILTER (WHERE query = %(listen)s)"
            " FROM pg_stat_activity WHERE application_name = %(app)s",
            {"listen": listen, "app": worker.app_name},
        )
        connections, listening = int(rows[0][0]), int(rows[0][1])
        if listening and connections >= worker.concurrency + 2:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the command worker did not connect and listen within {READY_TIMEOUT}s"
                f" ({connections} connections, listening: {bool(listening)}):"
                f"\n{log_tail(worker.log)}"
            )
        time.sleep(0.05)
    queue = CommandQueue(store)
    for i in range(WARMUP_COMMANDS):
        queue.enqueue(_noop("warmup", i))
        time.sleep(0.005)
    _wait_empty(store, worker, deadline, what="warm-up")
    time.sleep(0.5)  # idle: every slot back waiting on its condition, the listener on LISTEN


def _rows(store: EventStore, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    with store._raw() as conn, conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _table(store: EventStore) -> str:
    return f"{quote_schema(store.schema)}.commands"


def _counts_sql(store: EventStore) -> str:
    return f"SELECT count(*), count(*) FILTER (WHERE status = 'dead') FROM {_table(store)}"


def _wait_empty(store: EventStore, worker: Worker, deadline: float, *, what: str) -> None:
    """Until the commands table is empty; an error if one is dead or the worker died."""
    sql = _counts_sql(store)
    while True:
        worker.check()
        remaining, dead = _rows(store, sql)[0]
        if dead:
            raise RuntimeError(f"{what}: {dead} commands are dead:\n{log_tail(worker.log)}")
        if not remaining:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what}: {remaining} commands left at the deadline:\n{log_tail(worker.log)}"
            )
        time.sleep(0.01)


# -- enqueue ---------------------------------------------------------------------------------


@workload(
    "enqueue",
    default_n=5000,
    unit="commands",
    description="N commands enqueued, one transaction each (queue.enqueue, no tx), one producer",
)
def enqueue(bench: Bench, n: int) -> Run:
    queue = CommandQueue(bench.store)
    commands = [_noop(bench.run_id, i) for i in range(n)]
    with bench.timed() as timer:
        for command in commands:
            queue.enqueue(command)
    (remaining,) = _rows(bench.store, f"SELECT count(*) FROM {_table(bench.store)}")[0]
    if remaining != n:
        raise RuntimeError(f"enqueue: {remaining} commands stored of the {n} enqueued")
    return Run(
        timer.seconds, n, {"queue": QUEUE, "per_command_us": round(timer.seconds / n * 1e6, 1)}
    )


# -- drain -----------------------------------------------------------------------------------


def _drain_once(
    store: EventStore, n: int, concurrency: int, run_id: str, scratch: Path
) -> tuple[float, float]:
    """Seconds from the commit of N queued no-op commands until a worker process ran them,
    and the seconds the (untimed) ``enqueue_many`` transaction took."""
    queue = CommandQueue(store)
    commands = [_noop(run_id, i) for i in range(n)]
    sql = _counts_sql(store)
    with worker_process(store, concurrency=concurrency, scratch=scratch) as worker:
        gc.collect()
        committed: list[float] = []
        begun = time.perf_counter()
        with store.transaction() as tx:
            tx.on_commit(lambda: committed.append(time.perf_counter()))  # first callback
            ids = queue.enqueue_many(commands, tx=tx)
        enqueue_many_s = committed[0] - begun
        deadline = time.monotonic() + max(60.0, n / 200)
        while True:
            remaining, dead = _rows(store, sql)[0]
            if not remaining:
                seconds = time.perf_counter() - committed[0]
                break
            if dead:
                raise RuntimeError(f"drain: {dead} commands are dead:\n{log_tail(worker.log)}")
            worker.check()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"drain: {remaining} of {n} commands left after {max(60.0, n / 200):.0f}s"
                    f" (concurrency {concurrency}):\n{log_tail(worker.log)}"
                )
            time.sleep(DRAIN_POLL)
    if len(ids) != n:
        raise RuntimeError(f"drain: enqueue_many returned {len(ids)} ids for {n} commands")
    _check_processed(worker, n, "drain")
    return seconds, enqueue_many_s


@workload(
    "drain",
    default_n=20_000,
    min_n=20_000,
    unit="commands",
    description=(
        "commit of N queued no-op commands (enqueue_many, one transaction) -> a ready, idle"
        f" worker process has run them all (table empty); concurrency"
        f" {'/'.join(map(str, DRAIN_CONCURRENCIES))}, each in a fresh schema;"
        f" per_s: concurrency {DRAIN_DEFAULT}"
    ),
)
def drain(bench: Bench, n: int) -> Run:
    store = bench.store
    seconds: dict[int, float] = {}
    enqueue_many_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as scratch:
        for concurrency in DRAIN_CONCURRENCIES:
            if concurrency == DRAIN_DEFAULT:  # the run's own schema
                took, setup = _drain_once(store, n, concurrency, bench.run_id, Path(scratch))
            else:  # a fresh schema of its own: no dead rows of another drain in the table
                with fresh_store(store.url, partitions=store.partitions, pool_size=2) as other:
                    took, setup = _drain_once(other, n, concurrency, bench.run_id, Path(scratch))
            seconds[concurrency] = took
            enqueue_many_s.append(setup)
    rates = {c: n / s for c, s in seconds.items()}
    extra: dict[str, Any] = {"concurrency": DRAIN_DEFAULT}
    extra.update({f"per_s_c{c}": round(rate, 1) for c, rate in rates.items()})
    extra["best_concurrency"] = max(rates, key=lambda c: rates[c])
    extra["enqueue_many_s"] = round(statistics.median(enqueue_many_s), 4)
    extra["poll_ms"] = DRAIN_POLL * 1000
    return Run(seconds[DRAIN_DEFAULT], n, extra)


# -- queue_latency ---------------------------------------------------------------------------


@workload(
    "queue_latency",
    default_n=1000,
    unit="commands",
    description=(
        "producer's clock just before queue.enqueue -> the handler started in an idle worker"
        f" process (concurrency {LATENCY_CONCURRENCY}); N enqueues"
        f" {LATENCY_PAUSE * 1000:.0f} ms apart, p50/p99/max"
    ),
)
def queue_latency(bench: Bench, n: int) -> Run:
    store = bench.store
    queue = CommandQueue(store)
    commands = [_probe(bench.run_id, i) for i in range(n)]
    before: list[float] = []  # time.time() just before each enqueue
    after: list[float] = []  # ... and just after it returned (committed)
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as scratch:
        probes = Path(scratch) / "probes.txt"
        env = {PROBES_ENV: str(probes)}
        with worker_process(
            store, concurrency=LATENCY_CONCURRENCY, scratch=Path(scratch), env=env
        ) as worker:
            with bench.timed() as timer:
                for command in commands:
                    before.append(time.time())
                    queue.enqueue(command)
                    after.append(time.time())
                    time.sleep(LATENCY_PAUSE)
            _wait_empty(store, worker, time.monotonic() + READY_TIMEOUT, what="queue_latency")
        _check_processed(worker, n, "queue_latency")
        started: dict[int, float] = {}
        for line in probes.read_text().splitlines():
            i, at = line.split()
            started.setdefault(int(i), float(at))
    missing = [i for i in range(n) if i not in started]
    if missing:
        raise RuntimeError(f"{len(missing)} commands never reached their handler: {missing[:5]}")
    latency = sorted(started[i] - before[i] for i in range(n))
    from_commit = sorted(started[i] - after[i] for i in range(n))
    enqueue_s = sorted(after[i] - before[i] for i in range(n))
    return Run(
        timer.seconds,
        n,
        {
            "p50_ms": _ms(statistics.median(latency)),
            "p99_ms": _ms(_p99(latency)),
            "max_ms": _ms(latency[-1]),
            "mean_ms": _ms(statistics.fmean(latency)),
            "enqueue_p50_ms": _ms(statistics.median(enqueue_s)),
            "committed_p50_ms": _ms(statistics.median(from_commit)),
            "committed_p99_ms": _ms(_p99(from_commit)),
            "concurrency": LATENCY_CONCURRENCY,
            "pause_ms": round(LATENCY_PAUSE * 1000, 1),
        },
    )
