"""The command-queue workloads of BENCHMARKS.md: enqueue, drain, queue_latency, ordering_latency.

``drain``, ``queue_latency`` and ``ordering_latency`` run the worker as its own process, as in
production::

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
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import text

from eventsource import CommandQueue, EventStore
from eventsource._internal import command_queries, quote_schema

from . import _projections  # noqa: F401 - registered first: the order of BENCHMARKS.md
from ._command_handlers import LINKS_ENV, PROBES_ENV, QUEUE, BenchLink, BenchNoop, BenchProbe
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
ORDERING_KEYS = 4  # ordering keys enqueued together (one transaction): a wave
ORDERING_CHAIN = 2  # commands per key: one gap per key
ORDERING_SLEEP_MS = 5.0  # each handler's sleep in the waves (the solo phase's handlers: none)
ORDERING_PAUSE = 0.010  # seconds of idle worker after a wave is done, before the next
ORDERING_POLL = 0.001  # seconds between two reads of the links file while a wave runs
ORDERING_TIMEOUT = 30.0  # seconds for one wave to run and be acknowledged
CLOCK_SLACK = 0.001  # seconds the database's clock may stray outside the bracket of ours
WARMUP_COMMANDS = 20  # handled by a new worker before measuring (imports, prepared statements)
READY_TIMEOUT = 60.0  # seconds for a worker process to connect, listen and handle the warm-up
STOP_TIMEOUT = 15.0  # seconds for the worker to exit after SIGTERM


def _noop(run_id: str, i: int) -> BenchNoop:
    return BenchNoop(account_id=f"bench-{run_id}-{i:08d}", amount=100 + i % 900, i=i)


def _probe(run_id: str, i: int) -> BenchProbe:
    return BenchProbe(account_id=f"bench-{run_id}-{i:08d}", amount=100 + i % 900, i=i)


def _link(run_id: str, i: int, sleep_ms: float = 0.0) -> BenchLink:
    return BenchLink(
        account_id=f"bench-{run_id}-{i:08d}", amount=100 + i % 900, i=i, sleep_ms=sleep_ms
    )


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
    listen = command_queries(store.schema).listen
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


# -- ordering_latency ------------------------------------------------------------------------

ACKS_TABLE = "bench_acks"


def _quantile(values: list[float], q: int) -> float:
    """The ``q``-th percentile of ``values`` (inclusive method, as ``_p99``)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _check_clock(store: EventStore) -> float:
    """The database's ``clock_timestamp()`` minus ours (seconds); an error unless they agree.

    ``ordering_latency`` compares the server's clock (the ack) with the worker's
    ``time.time()`` (the handler's start): valid only when both read the same wall clock, i.e.
    the server runs on this machine. The server's reading must fall inside our bracket of the
    round trip (give or take ``CLOCK_SLACK``).
    """
    best: tuple[float, float, float] | None = None
    for _ in range(5):  # the tightest bracket of a few round trips
        before = time.time()
        (server,) = _rows(store, "SELECT extract(epoch FROM clock_timestamp())::float8")[0]
        after = time.time()
        if best is None or after - before < best[1] - best[0]:
            best = (before, after, float(server))
    assert best is not None
    before, after, server = best
    if not before - CLOCK_SLACK <= server <= after + CLOCK_SLACK:
        raise RuntimeError(
            "ordering_latency needs the database server on this machine (one wall clock):"
            f" its clock_timestamp() is {(server - (before + after) / 2) * 1000:+.3f} ms off"
            f" ours, outside a round trip of {(after - before) * 1000:.3f} ms"
        )
    return server - (before + after) / 2


def _stamp_acks(store: EventStore) -> None:
    """Record when each command's row is deleted from the commands table (its ack).

    An ``AFTER DELETE`` row trigger inserts ``(id, clock_timestamp())`` into the unlogged table
    ``bench_acks`` of the run's schema. After-row triggers fire at the end of the deleting
    statement, so the stamp is the ack statement's end, just before its commit.
    """
    schema = quote_schema(store.schema)
    with store.engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE UNLOGGED TABLE {schema}.{ACKS_TABLE}"
                " (id bigint PRIMARY KEY, acked_at timestamptz NOT NULL)"
            )
        )
        conn.execute(
            text(
                f"CREATE FUNCTION {schema}.bench_stamp_ack() RETURNS trigger LANGUAGE plpgsql"
                f" AS $$ BEGIN INSERT INTO {schema}.{ACKS_TABLE} VALUES (OLD.id,"
                " clock_timestamp()) ON CONFLICT (id) DO NOTHING; RETURN NULL; END $$"
            )
        )
        conn.execute(
            text(
                f"CREATE TRIGGER bench_stamp_ack AFTER DELETE ON {_table(store)}"
                f" FOR EACH ROW EXECUTE FUNCTION {schema}.bench_stamp_ack()"
            )
        )


def _acks(store: EventStore, ids: list[int]) -> dict[int, float]:
    """Command id -> its ack stamp (epoch seconds), for those of ``ids`` that were acked."""
    rows = _rows(
        store,
        f"SELECT id, extract(epoch FROM acked_at)::float8"
        f" FROM {quote_schema(store.schema)}.{ACKS_TABLE} WHERE id = ANY(%(ids)s)",
        {"ids": ids},
    )
    return {int(row[0]): float(row[1]) for row in rows}


class _Links:
    """The ``i start end`` lines the worker's ``BenchLink`` handlers append, read as they come."""

    def __init__(self, path: Path) -> None:
        path.touch()
        self._file = open(path, encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._rest = ""
        self.seen: dict[int, tuple[float, float]] = {}  # i -> (handler start, handler end)

    def read(self) -> int:
        """Take in what was written since; the number of commands seen so far."""
        data = self._rest + self._file.read()
        *lines, self._rest = data.split("\n")  # a line still being written stays in _rest
        for line in lines:
            i, start, end = line.split()
            self.seen.setdefault(int(i), (float(start), float(end)))
        return len(self.seen)

    def close(self) -> None:
        self._file.close()


def _run_wave(
    store: EventStore, worker: Worker, links: _Links, *, chains: list[tuple[str, list[BenchLink]]]
) -> list[list[int]]:
    """Enqueue one wave of chains (one transaction: ``enqueue_many`` per key) and wait until
    every command of it ran and was acknowledged; the ids of each chain, in order.

    While the wave runs, the wait reads only the links file (no database traffic); once every
    handler has run it polls the commands table until it is empty.
    """
    queue = CommandQueue(store)
    with store.transaction() as tx:
        ids = [queue.enqueue_many(chain, ordering_key=key, tx=tx) for key, chain in chains]
    expected = len(links.seen) + sum(len(chain) for _, chain in chains)
    deadline = time.monotonic() + ORDERING_TIMEOUT
    while links.read() < expected:
        if time.monotonic() > deadline:
            worker.check()
            raise RuntimeError(
                f"ordering_latency: {expected - len(links.seen)} commands of a wave not run"
                f" within {ORDERING_TIMEOUT}s:\n{log_tail(worker.log)}"
            )
        time.sleep(ORDERING_POLL)
    _wait_empty(store, worker, deadline, what="ordering_latency")
    return ids


Chains = list[tuple[str, list[BenchLink]]]  # (ordering key, its commands in order)


def _waves(run_id: str, keys: range, per_wave: int, sleep_ms: float) -> list[Chains]:
    """``keys`` in waves of ``per_wave``; key ``k``'s commands are ``BenchLink``s numbered
    ``k * ORDERING_CHAIN + j``."""
    waves: list[Chains] = []
    for first in range(keys.start, keys.stop, per_wave):
        waves.append(
            [
                (
                    f"bench-{run_id}-key-{k:08d}",
                    [
                        _link(run_id, k * ORDERING_CHAIN + j, sleep_ms)
                        for j in range(ORDERING_CHAIN)
                    ],
                )
                for k in range(first, min(keys.stop, first + per_wave))
            ]
        )
    return waves


@dataclass
class _Gaps:
    """One phase's gaps, in seconds, sorted: B's start - A's ack, B's start - A's end, and
    A's ack - A's end, for each pair (A, B) of successive commands of one key."""

    acked: list[float]
    ended: list[float]
    ack_delay: list[float]

    def figures(self, prefix: str) -> dict[str, float]:
        out = {
            "p50_ms": _ms(statistics.median(self.acked)),
            "p90_ms": _ms(_quantile(self.acked, 90)),
            "p99_ms": _ms(_quantile(self.acked, 99)),
            "max_ms": _ms(self.acked[-1]),
            "mean_ms": _ms(statistics.fmean(self.acked)),
            "min_ms": _ms(self.acked[0]),
            "end_p50_ms": _ms(statistics.median(self.ended)),
            "end_p90_ms": _ms(_quantile(self.ended, 90)),
            "end_p99_ms": _ms(_quantile(self.ended, 99)),
            "ack_p50_ms": _ms(statistics.median(self.ack_delay)),
            "ack_p99_ms": _ms(_quantile(self.ack_delay, 99)),
        }
        return {f"{prefix}{name}": value for name, value in out.items()}


def _gaps(
    chains: Chains,
    ids: list[list[int]],
    links: dict[int, tuple[float, float]],
    acks: dict[int, float],
) -> _Gaps:
    """The gaps of one phase; an error if a command was not seen to run or be acked, or if a
    command started before its predecessor returned (the ordering key did not hold)."""
    gaps = _Gaps([], [], [])
    missing: list[str] = []
    overtaken: list[str] = []
    for (key, commands), chain_ids in zip(chains, ids, strict=True):
        for a_cmd, b_cmd, a_id in zip(commands, commands[1:], chain_ids, strict=False):
            a, b, ack = links.get(a_cmd.i), links.get(b_cmd.i), acks.get(a_id)
            if a is None or b is None or ack is None:
                missing.append(key)
                continue
            if b[0] < a[1]:
                overtaken.append(key)
            gaps.acked.append(b[0] - ack)
            gaps.ended.append(b[0] - a[1])
            gaps.ack_delay.append(ack - a[1])
    if missing:
        raise RuntimeError(
            f"ordering_latency: {len(missing)} commands without a recorded run or ack"
            f" (a DELETE of their row): keys {missing[:3]}"
        )
    if overtaken:
        raise RuntimeError(
            f"ordering_latency: {len(overtaken)} commands started before their predecessor"
            f" returned (the ordering key did not hold): keys {overtaken[:3]}"
        )
    for values in (gaps.acked, gaps.ended, gaps.ack_delay):
        values.sort()
    return gaps


@workload(
    "ordering_latency",
    default_n=1000,
    unit="keys",
    description=(
        "ack of a command -> the handler of the next command of its ordering key started, in an"
        f" idle worker process (concurrency {LATENCY_CONCURRENCY}); N keys of {ORDERING_CHAIN}"
        f" commands in waves of {ORDERING_KEYS} keys (handlers sleep {ORDERING_SLEEP_MS:g} ms),"
        " p50/p90/p99; solo_*: N keys one at a time, no-op handlers"
    ),
)
def ordering_latency(bench: Bench, n: int) -> Run:
    """The gap between successive commands of one ordering key, with an idle worker process.

    One worker process (as ``queue_latency``: ``eventsource worker run``, concurrency 4, ready
    and idle), two phases of N keys each, every key a chain of ``ORDERING_CHAIN`` (2)
    ``BenchLink`` commands enqueued by one ``enqueue_many(chain, ordering_key=key)``, so that
    the second is pending, behind the first, before the first is claimed:

    - **waves** (the headline figures): ``ORDERING_KEYS`` (4) keys per wave, enqueued in one
      transaction; every handler sleeps ``ORDERING_SLEEP_MS`` (5 ms), as a handler doing I/O
      would. Several keys are in flight, so this shows whether a key's next command waits
      behind other work of the slot that ran its predecessor while other slots are idle;
    - **solo** (``solo_*``): one key at a time, handlers that do nothing: the bare path from
      an ack to the next claim and handler start.

    After each wave (or solo key) the producer waits until every handler of it ran (it reads
    the handlers' file, no database traffic) and the commands table is empty, then leaves the
    worker idle for ``ORDERING_PAUSE`` (10 ms).

    Timed for each pair (A, B) of successive commands of one key, all on this machine's wall
    clock (the server's ``clock_timestamp()`` and the worker's ``time.time()``;
    ``_check_clock`` refuses a server elsewhere):

    - ``ack``: A's row deleted by the worker's ack statement, ``clock_timestamp()`` in an
      ``AFTER DELETE`` row trigger (``_stamp_acks``): the end of that statement, before its
      commit (the commit's WAL flush, and the trigger's one-row insert, are in the gap);
    - ``end``: A's handler's last act, ``time.time()`` (after its sleep);
    - ``start``: B's handler's first act, ``time.time()`` (before its sleep).

    ``p50_ms``/``p90_ms``/``p99_ms``/``max_ms``/``mean_ms``/``min_ms``: start - ack (the
    issue's target). ``end_*``: start - end, the gap as the handlers see it (the ack's delay
    included). ``ack_p50_ms``/``ack_p99_ms``: ack - end, how long A waited for its ack. The
    same with ``solo_`` for the solo phase. Fails if a B started before its A returned (the
    ordering key did not hold), if an ack was not seen (the ack is no longer a DELETE), or if
    the worker did not run each command once. ``seconds``/``per_s`` cover both phases with
    their waits and pauses and mean little.
    """
    store = bench.store
    clock_offset = _check_clock(store)
    _stamp_acks(store)
    run_id = bench.run_id
    phases = {
        "": _waves(run_id, range(n), ORDERING_KEYS, ORDERING_SLEEP_MS),
        "solo_": _waves(run_id, range(n, 2 * n), 1, 0.0),
    }
    ids: dict[str, list[list[int]]] = {name: [] for name in phases}
    with tempfile.TemporaryDirectory(prefix="bench-ordering-") as scratch:
        path = Path(scratch) / "links.txt"
        with closing(_Links(path)) as links:
            with worker_process(
                store,
                concurrency=LATENCY_CONCURRENCY,
                scratch=Path(scratch),
                env={LINKS_ENV: str(path)},
            ) as worker:
                with bench.timed() as timer:
                    for name, waves in phases.items():
                        for wave in waves:
                            ids[name].extend(_run_wave(store, worker, links, chains=wave))
                            time.sleep(ORDERING_PAUSE)
                _wait_empty(store, worker, time.monotonic() + READY_TIMEOUT, what="ordering")
            _check_processed(worker, 2 * n * ORDERING_CHAIN, "ordering_latency")
            links.read()
    acks = _acks(store, [i for chains in ids.values() for chain in chains for i in chain])
    extra: dict[str, Any] = {}
    for name, waves in phases.items():
        chains = [chain for wave in waves for chain in wave]
        extra.update(_gaps(chains, ids[name], links.seen, acks).figures(name))
    extra.update(
        {
            "keys_per_wave": ORDERING_KEYS,
            "chain": ORDERING_CHAIN,
            "sleep_ms": ORDERING_SLEEP_MS,
            "clock_offset_ms": _ms(clock_offset),
            "concurrency": LATENCY_CONCURRENCY,
            "pause_ms": round(ORDERING_PAUSE * 1000, 1),
        }
    )
    return Run(timer.seconds, n, extra)
