"""The fault suite's harness: one scenario's processes, its probes and its checks.

A ``Scenario`` runs, against the disposable server, in a schema of its own:

- 2 projection workers (``eventsource projections run tests.fault._model:Applied``, ids
  ``p1``/``p2``) and 2 command workers (``eventsource worker run tests.fault._model``, ids
  ``c1``/``c2``, each also serving a probe queue of its own, ``probe-c1``/``probe-c2``);
- 2 event writers and 1 command enqueuer (``python -m tests.fault._load``), which record what
  was acknowledged.

The test starts it, applies a fault, and calls ``finish(back)`` with the moment the server was
back, which probes the wake-ups, stops the load, waits for the work to drain and checks
everything, then fails with every problem found and the tails of the logs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
from sqlalchemy import create_engine

from eventsource import AppendResult, CommandQueue, EventStore
from eventsource.db import quote_schema
from tests.acceptance._support import REPO_ROOT, cli_env, eventsource_command
from tests.domain import Deposited

from ._model import RUNS_DIR_ENV, Applied, Job, create_tables
from ._server import DisposableServer

PARTITIONS = 8
PROJECTION_TTL = 5.0  # ProjectionWorker's lease TTL: `projections run` has no option for it
COMMAND_LEASE = 2.0  # `worker run --lease`
WAKE_LIMIT = 0.050  # a wake-up faster than this counts as restored
STREAK = 5  # ... when so many probes in a row are
PROBE_GAP = 0.1  # seconds between two probes of one kind
RECOVERY_WINDOW = 5.0  # ... within this many seconds of the server being back
BASELINE_WINDOW = 10.0
DRAIN_TIMEOUT = 45.0
PROBE_BASE = 9 * 10**8  # numbers of the probe commands
PROJECTION = Applied.name

SETPRIV = shutil.which("setpriv")
PROJECTION_WORKERS = ("p1", "p2")
COMMAND_WORKERS = ("c1", "c2")


def say(message: str) -> None:
    """A diagnostic line (shown with ``-s``), stamped with the time."""
    print(f"[fault {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Proc:
    """One child process, its stdout and stderr going to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        # The child dies with the test process, even if that is killed outright.
        pdeathsig = [SETPRIV, "--pdeathsig", "KILL", "--"] if SETPRIV else []
        self.process = subprocess.Popen(
            [*pdeathsig, *argv],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid
        self.frozen = False

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        text = "\n".join(line[:300] for line in self.log_text().splitlines()[-lines:])
        return f"--- {self.name} (pid {self.pid}, exit {self.returncode}) log tail:\n{text}"

    def log_summary(self) -> str:
        """How often each warning or error event was logged (JSON log lines)."""
        counts: Counter[str] = Counter()
        for line in self.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                if "Traceback" in line or "Error" in line:
                    counts[f"(text) {line.strip()[:100]}"] += 1
                continue
            if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                counts[f"{entry.get('level')}: {entry.get('event')}"] += 1
        return ", ".join(f"{event} x{n}" for event, n in counts.most_common(6)) or "quiet"

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM; the exit code, or None if it did not exit within ``timeout`` seconds."""
        if not self.alive():
            return self.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def dump_stacks(self) -> str:
        """SIGABRT, which makes a stuck process print every thread's stack on its way out
        (``PYTHONFAULTHANDLER``); the end of its log then."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        return self.tail(80)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)  # a stopped process cannot die
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


class RunsLog:
    """The handler starts recorded by the command workers (``runs-<pid>.jsonl``), read as they
    grow."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._offsets: dict[Path, int] = {}
        self.by_n: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            for path in sorted(self.directory.glob("runs-*.jsonl")):
                offset = self._offsets.get(path, 0)
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1  # whole lines only
                for line in chunk[:end].splitlines():
                    run = json.loads(line)
                    self.by_n[int(run["n"])].append(run)
                self._offsets[path] = offset + end

    def first_start(self, n: int) -> dict[str, Any] | None:
        self.refresh()
        with self._lock:
            runs = self.by_n.get(n)
            return runs[0] if runs else None


@dataclass
class Probe:
    worker: str  # who served it (or, if nobody did, the worker it was meant for)
    latency: float | None  # seconds; None: not served within the window
    where: str  # partition or queue
    send: float | None = None  # seconds the append or enqueue itself took

    def __str__(self) -> str:
        shown = "-" if self.latency is None else f"{self.latency * 1000:.0f}"
        return shown if self.send is None else f"{shown}({self.send * 1000:.0f})"


@dataclass
class ProbeReport:
    """Single probes of one kind of wake-up, one at a time and ``PROBE_GAP`` apart (so that
    the workers are idle when each comes), from ``since`` on.

    A worker's wake-ups count as restored by ``STREAK`` probes in a row that it served under
    ``WAKE_LIMIT``, the first of them sent within ``window`` seconds: a worker that only polls
    (every second, with several threads) serves one probe in a few that fast by luck, five in
    a row hardly ever.
    """

    what: str
    need: set[str]
    since: float  # the window's start (time.monotonic())
    window: float
    probes: list[Probe] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    streaks: dict[str, list[float]] = field(default_factory=dict)  # worker -> sent at (s)
    restored: dict[str, float] = field(default_factory=dict)  # worker -> streak start (s)

    @property
    def deadline(self) -> float:
        """When to give up: a streak started at the end of the window has time to finish."""
        return self.since + self.window + STREAK * (PROBE_GAP + WAKE_LIMIT) + 0.5

    def add(self, probe: Probe, sent: float) -> None:
        self.probes.append(probe)
        if probe.latency is None or probe.latency >= WAKE_LIMIT:
            self.streaks.pop(probe.worker, None)
            return
        streak = self.streaks.setdefault(probe.worker, [])
        streak.append(sent - self.since)
        if len(streak) >= STREAK and streak[-STREAK] <= self.window:
            self.restored.setdefault(probe.worker, streak[-STREAK])

    def ok(self) -> bool:
        return bool(self.restored) and self.need <= set(self.restored)

    def describe(self) -> str:
        by_worker: dict[str, list[str]] = {worker: [] for worker in self.need}
        for probe in self.probes:
            by_worker.setdefault(probe.worker, []).append(str(probe))
        shown = "; ".join(
            f"{worker} [{', '.join(values[:14]) or 'served no probe'}"
            f"{', ...' if len(values) > 14 else ''}]"
            + (
                f" restored from {self.restored[worker]:.2f}s"
                if worker in self.restored
                else " NOT restored"
            )
            for worker, values in sorted(by_worker.items())
        )
        errors = f"; probe errors: {dict(self.errors)}" if self.errors else ""
        return (
            f"{self.what} (ms; {STREAK} in a row under {WAKE_LIMIT * 1000:.0f}ms, from within"
            f" {self.window:.0f}s, needed from each of {sorted(self.need)}):"
            f" {shown or 'no probe served'}{errors}"
        )


def _stream_for(partition: int, partitions: int, prefix: str) -> str:
    """A stream id of ``partition`` (the store's rule: crc32 of the key, modulo)."""
    for k in itertools.count():
        stream_id = f"{prefix}-{k}"
        if zlib.crc32(stream_id.encode("utf-8")) % partitions == partition:
            return stream_id
    raise AssertionError("unreachable")


def _client_ports(pid: int, server_port: int) -> set[int]:
    """The local ports of ``pid``'s TCP connections to the server (via /proc)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    with open("/proc/net/tcp", encoding="ascii") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


class Scenario:
    """One fault scenario's processes and bookkeeping (a context manager that kills them all)."""

    def __init__(self, server: DisposableServer, tmp_path: Path, label: str) -> None:
        self.server = server
        self.label = label
        self.dir = tmp_path
        self.schema = f"fault_{uuid.uuid4().hex[:10]}"
        self.s = quote_schema(self.schema)
        self.url = server.url()
        self.runs_dir = tmp_path / "runs"
        self.runs_dir.mkdir()
        self.runs = RunsLog(self.runs_dir)
        self.workers: dict[str, Proc] = {}
        self.loads: dict[str, Proc] = {}
        self.problems: list[str] = []
        self.probe_appends: list[dict[str, Any]] = []  # acked probe events (like the writers')
        self.probe_uncertain: set[str] = set()
        self.probe_commands: dict[int, int] = {}  # n -> command id, acked probe commands
        self.probe_commands_uncertain: set[int] = set()
        self._probe_n = itertools.count(PROBE_BASE)
        self.probe_streams = {
            p: _stream_for(p, PARTITIONS, f"probe-{p}") for p in range(PARTITIONS)
        }
        self.started_at = time.monotonic()

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in [*self.loads.values(), *self.workers.values()]:
            proc.close()
        if not self.server.running():
            self.server.start()  # for the next scenario

    # -- database access -------------------------------------------------------------------

    def rows(self, sql: str, params: Any = None, *, timeout: float = 30) -> list[Any]:
        """Rows of ``sql`` (``{s}``: the schema), on a connection of its own, retried while
        the server is away."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.server.connect() as conn:
                    return conn.execute(sql.format(s=self.s), params).fetchall()
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Create the schema, start the workers and the load, and wait until all is running
        with fast wake-ups (the baseline)."""
        if not self.server.running():
            self.server.start()
        with EventStore.from_url(self.url, schema=self.schema, partitions=PARTITIONS) as store:
            store.upgrade()
        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                create_tables(conn, self.schema)
        finally:
            engine.dispose()

        env = cli_env(
            self.url,
            EVENTSOURCE_SCHEMA=self.schema,
            EVENTSOURCE_LOG_FORMAT="json",
            EVENTSOURCE_COMMAND_BACKOFF_BASE="0.05",
            EVENTSOURCE_COMMAND_BACKOFF_MAX="2",
            PYTHONFAULTHANDLER="1",  # SIGABRT prints the stacks of a stuck process
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            **{RUNS_DIR_ENV: str(self.runs_dir)},
        )
        cli = eventsource_command()
        for name in PROJECTION_WORKERS:
            argv = [*cli, "projections", "run", f"{Applied.__module__}:Applied"]
            self.workers[name] = Proc(name, [*argv, "--worker-id", name], env, self.dir)
        for name in COMMAND_WORKERS:
            argv = [*cli, "worker", "run", Job.__module__, "--worker-id", name]
            argv += ["--queue", Job.default_queue, "--queue", f"probe-{name}"]
            argv += ["--lease", str(COMMAND_LEASE), "--grace", "5", "--concurrency", "4"]
            self.workers[name] = Proc(name, argv, env, self.dir)
        self._wait(
            lambda: all("worker started" in w.log_text() for w in self.workers.values()),
            30,
            "every worker to log `worker started`",
            check_workers=True,
        )
        load = [sys.executable, "-m", "tests.fault._load"]
        for kind, name, index in (("events", "w1", 1), ("events", "w2", 2), ("commands", "q1", 3)):
            out = str(self.dir / f"{name}.jsonl")
            argv = [*load, kind, self.url, self.schema, str(index), out]
            self.loads[name] = Proc(name, argv, env, self.dir)
        self._wait(self._warm, 30, "the load to be applied and run", check_workers=True)
        say(f"[{self.label}] started in {time.monotonic() - self.started_at:.1f}s")
        self.pause_load()
        projection, commands = self.probe(time.monotonic(), BASELINE_WINDOW)
        self.resume_load()
        say(f"[{self.label}] baseline {projection.describe()}")
        say(f"[{self.label}] baseline {commands.describe()}")
        if not (projection.ok() and commands.ok()):
            self.fail(
                "the wake-ups were not fast before any fault (the machine is too busy, or the"
                " workers never were)"
            )
        time.sleep(2)  # the fault comes amid the load, not right after the probes

    def _warm(self) -> bool:
        """Every load process started (its signal handlers set) and acknowledged something,
        the read model and the commands' effects growing, both projection workers holding
        partitions."""
        for name, proc in self.loads.items():
            if not proc.alive():
                self.fail(f"load process {name} exited {proc.returncode} at start")
            if not any(r.get("acked") for r in self._records(name)):
                return False
        owners = self.rows(
            "SELECT DISTINCT owner FROM {s}.projection_checkpoints WHERE owner IS NOT NULL"
        )
        applied = self.rows("SELECT EXISTS (SELECT FROM {s}.fault_applied)")[0][0]
        effects = self.rows("SELECT EXISTS (SELECT FROM {s}.fault_effects)")[0][0]
        return bool(applied and effects) and {o for (o,) in owners} == set(PROJECTION_WORKERS)

    def _wait(
        self,
        condition: Callable[[], bool],
        timeout: float,
        what: str,
        *,
        check_workers: bool = False,
    ) -> float:
        started = time.monotonic()
        while not condition():
            if check_workers and (dead := [w for w in self.workers.values() if not w.alive()]):
                self.fail(f"worker(s) {[w.name for w in dead]} exited while waiting for {what}")
            if time.monotonic() - started > timeout:
                self.fail(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)
        return time.monotonic() - started

    # -- load ------------------------------------------------------------------------------

    def pause_load(self) -> None:
        """The load processes pause after the operation in hand (retried until it is
        acknowledged, through an outage), so that the probes find the workers idle."""
        for proc in self.loads.values():
            if proc.alive():
                proc.process.send_signal(signal.SIGUSR1)

    def resume_load(self) -> None:
        for proc in self.loads.values():
            if proc.alive():
                proc.process.send_signal(signal.SIGUSR2)

    # -- probes ----------------------------------------------------------------------------

    def probe(self, since: float, window: float) -> tuple[ProbeReport, ProbeReport]:
        """Probe both kinds of wake-up at once, from ``since`` on (see ``ProbeReport``)."""
        live = {name for name, w in self.workers.items() if w.alive() and not w.frozen}
        projection = ProbeReport(
            "append->applied", {n for n in PROJECTION_WORKERS if n in live}, since, window
        )
        commands = ProbeReport(
            "enqueue->handler start", {n for n in COMMAND_WORKERS if n in live}, since, window
        )
        threads = [
            threading.Thread(target=self._guarded, args=(self._probe_projection, projection)),
            threading.Thread(target=self._guarded, args=(self._probe_commands, commands)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return projection, commands

    @staticmethod
    def _guarded(target: Callable[[ProbeReport], None], report: ProbeReport) -> None:
        try:
            target(report)
        except BaseException as exc:  # a bug of the harness: shown, never lost in a thread
            report.errors[f"harness: {exc!r}"] += 1

    def _probe_projection(self, report: ProbeReport) -> None:
        deadline = report.deadline
        pids = {w.pid: name for name, w in self.workers.items()}
        order = itertools.cycle(range(PARTITIONS))
        store: EventStore | None = None
        conn: psycopg.Connection[Any] | None = None
        try:
            while time.monotonic() < deadline and not (report.ok()):
                try:
                    if store is None:
                        store = EventStore.from_url(
                            self.url, schema=self.schema, partitions=PARTITIONS, pool_size=1
                        )
                    if conn is None:
                        conn = self.server.connect()
                    partition, owner = self._next_partition(conn, report, order)
                    event = Deposited(amount=1)
                    sent = time.monotonic()
                    try:
                        result = store.append(self.probe_streams[partition], [event])
                    except BaseException:
                        self.probe_uncertain.add(str(event.event_id))
                        raise
                    assert isinstance(result, AppendResult)
                    took = time.monotonic() - sent
                    self.probe_appends.append(
                        {
                            "stream_id": result.stream_id,
                            "stream_version": result.stream_version,
                            "partition": result.partition,
                            "position": result.position,
                            "event_ids": [str(event.event_id)],
                        }
                    )
                    probe = self._await_applied(conn, result, sent, deadline, pids, owner=owner)
                    probe.send = took
                    report.add(probe, sent)
                    time.sleep(PROBE_GAP)
                except Exception as exc:  # the server is away: count it, start afresh
                    report.errors[type(exc).__name__] += 1
                    for closeable in (store, conn):
                        if closeable is not None:
                            with contextlib.suppress(Exception):
                                closeable.close()
                    store, conn = None, None
                    time.sleep(0.05)
        finally:
            if store is not None:
                store.close()
            if conn is not None:
                conn.close()

    def _next_partition(
        self,
        conn: psycopg.Connection[Any],
        report: ProbeReport,
        order: Iterator[int],
    ) -> tuple[int, str]:
        """The next partition in turn, preferring one held by a worker still without a fast
        probe."""
        wanted = report.need - set(report.restored)
        owners = dict(
            conn.execute(
                f"SELECT partition, owner FROM {self.s}.projection_checkpoints"
                " WHERE projection = %s",
                (PROJECTION,),
            ).fetchall()
        )
        first = next(order)
        for offset in range(PARTITIONS):
            partition = (first + offset) % PARTITIONS
            if owners.get(partition) in wanted:
                return partition, str(owners[partition])
        return first, str(owners.get(first))

    def _await_applied(
        self,
        conn: psycopg.Connection[Any],
        result: AppendResult,
        sent: float,
        deadline: float,
        pids: dict[int, str],
        *,
        owner: str,
    ) -> Probe:
        where = f"partition {result.partition}"
        while True:
            row = conn.execute(
                f"SELECT position FROM {self.s}.projection_checkpoints"
                " WHERE projection = %s AND partition = %s",
                (PROJECTION, result.partition),
            ).fetchone()
            if row is not None and row[0] >= result.position:
                latency = time.monotonic() - sent
                break
            if time.monotonic() > deadline:
                return Probe(owner, None, where)
            time.sleep(0.002)
        applier = conn.execute(
            f"SELECT pid FROM {self.s}.fault_applied WHERE partition = %s AND position = %s",
            (result.partition, result.position),
        ).fetchall()
        worker = ",".join(pids.get(int(pid), f"pid {pid}") for (pid,) in applier) or "?"
        return Probe(worker, latency, where)

    def _probe_commands(self, report: ProbeReport) -> None:
        deadline = report.deadline
        store: EventStore | None = None
        targets = itertools.cycle(COMMAND_WORKERS)
        try:
            while time.monotonic() < deadline and not report.ok():
                wanted = report.need - set(report.restored)
                target = next(targets)
                if wanted and target not in wanted:
                    continue
                n = next(self._probe_n)
                try:
                    if store is None:
                        store = EventStore.from_url(self.url, schema=self.schema, pool_size=1)
                    sent, sent_at = time.time(), time.monotonic()
                    try:
                        enqueued = CommandQueue(store).enqueue(Job(n=n), queue=f"probe-{target}")
                    except BaseException:
                        self.probe_commands_uncertain.add(n)
                        raise
                    assert enqueued.id is not None
                    self.probe_commands[n] = enqueued.id
                except Exception as exc:
                    report.errors[type(exc).__name__] += 1
                    if store is not None:
                        with contextlib.suppress(Exception):
                            store.close()
                    store = None
                    time.sleep(0.05)
                    continue
                report.add(self._await_started(n, target, sent, deadline), sent_at)
                time.sleep(PROBE_GAP)
        finally:
            if store is not None:
                store.close()

    def _await_started(self, n: int, target: str, sent: float, deadline: float) -> Probe:
        where = f"probe-{target}"
        while True:
            run = self.runs.first_start(n)
            if run is not None:
                pids = {w.pid: name for name, w in self.workers.items()}
                worker = pids.get(int(run["pid"]), f"pid {run['pid']}")
                return Probe(worker, max(0.0, float(run["t"]) - sent), where)
            if time.monotonic() > deadline:
                return Probe(target, None, where)
            time.sleep(0.002)

    # -- freezing --------------------------------------------------------------------------

    def freeze_in_transaction(self, name: str, budget: float = 5.0) -> bool:
        """SIGSTOP the worker at a moment when one of its connections is inside a transaction
        of several statements (a batch, or a handler's ``ctx.tx``), if that happens within
        ``budget`` seconds; whether it was caught so."""
        proc = self.workers[name]
        in_tx = (
            "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s)"
            " AND (state LIKE 'idle in transaction%%'"
            "      OR (state = 'active' AND xact_start < query_start))"
        )
        deadline = time.monotonic() + budget
        with self.server.connect() as conn:
            while time.monotonic() < deadline:
                ports = list(_client_ports(proc.pid, self.server.port))
                if conn.execute(in_tx, (ports,)).fetchone()[0]:  # type: ignore[index]
                    proc.freeze()
                    time.sleep(0.05)  # let a statement in flight finish on the server
                    if conn.execute(in_tx, (ports,)).fetchone()[0]:  # type: ignore[index]
                        return True
                    proc.thaw()
                time.sleep(0.001)
        proc.freeze()
        return False

    def takeover(self, frozen_at: float, duration: float) -> list[str]:
        """While a projection worker and a command worker are frozen: the others take over
        their work. What was written a second into the freeze must be applied, and what was
        enqueued by then done, before the freeze ends (at ``frozen_at + duration``)."""
        time.sleep(max(0.0, frozen_at + 1.0 - time.monotonic()))
        heads = {int(p): int(h) for p, h in self.rows("SELECT partition, head FROM {s}.partitions")}
        ns = [n for r in self._records("q1") if r["acked"] for n in r["ns"]]
        deadline = frozen_at + duration
        applied_at = done_at = None
        behind: list[Any] = []
        undone = 0
        while time.monotonic() < deadline and (applied_at is None or done_at is None):
            if applied_at is None:
                positions = self.rows(
                    "SELECT partition, position, owner FROM {s}.projection_checkpoints"
                    " WHERE projection = %s",
                    (PROJECTION,),
                )
                behind = [tuple(r) for r in positions if r[1] < heads[r[0]]]
                if not behind:
                    applied_at = time.monotonic() - frozen_at
            if done_at is None:
                done = self.rows(
                    "SELECT count(DISTINCT n) FROM {s}.fault_effects WHERE n = ANY(%s)", (ns,)
                )[0][0]
                undone = len(ns) - done
                if not undone:
                    done_at = time.monotonic() - frozen_at
            time.sleep(0.2)

        def when(seconds: float | None) -> str:
            return "NOT within the freeze" if seconds is None else f"at {seconds:.1f}s"

        say(
            f"[{self.label}] takeover during the freeze: events written by 1s applied"
            f" {when(applied_at)}, commands enqueued by 1s done {when(done_at)}"
        )
        problems = []
        if applied_at is None:
            problems.append(
                f"the frozen projection worker's partitions were not taken over within"
                f" {duration:.0f}s (lease TTL {PROJECTION_TTL:.0f}s); behind (partition,"
                f" position, owner) vs heads {heads}: {behind}"
            )
        if done_at is None:
            problems.append(
                f"{undone} command(s) enqueued before the freeze not done within"
                f" {duration:.0f}s (lease {COMMAND_LEASE:.0f}s)"
            )
        time.sleep(max(0.0, deadline - time.monotonic()))
        return problems

    # -- the end ---------------------------------------------------------------------------

    def fail(self, message: str) -> None:
        """Fail now, with the logs."""
        raise AssertionError(f"[{self.label}] {message}\n{self.logs()}")

    def logs(self) -> str:
        parts = [p.tail() for p in self.workers.values()]
        parts += [p.tail(6) for p in self.loads.values()]
        parts.append(f"--- server log tail:\n{self.server.log_tail(15)}")
        return "\n".join(parts)

    def finish(self, back: float, *, extra: list[str] | None = None) -> None:
        """After the fault (the server back, or the workers thawed, at ``back``): probe the
        wake-ups, stop the load, let the work drain, check everything; fail with every
        problem found."""
        problems = list(extra or [])
        self.pause_load()
        projection, commands = self.probe(back, RECOVERY_WINDOW)
        self.resume_load()
        resumed = time.monotonic()
        say(f"[{self.label}] after recovery {projection.describe()}")
        say(f"[{self.label}] after recovery {commands.describe()}")
        for report in (projection, commands):
            if not report.ok():
                problems.append(
                    f"wake-ups not restored within {RECOVERY_WINDOW:.0f}s of recovery:"
                    f" {report.describe()}"
                )
        if not projection.ok():
            owners = self.rows(
                "SELECT coalesce(owner, 'nobody'), count(*) FROM {s}.projection_checkpoints"
                " WHERE projection = %s GROUP BY 1 ORDER BY 1",
                (PROJECTION,),
            )
            problems.append(f"partitions held after the window (owner, count): {owners}")
        time.sleep(2)  # some load after the recovery, too
        for name, proc in self.loads.items():
            code = proc.terminate(30)
            if code is None:
                problems.append(
                    f"load process {name} did not stop within 30s of SIGTERM (its operation in"
                    f" hand never returned); its stacks:\n{proc.dump_stacks()}"
                )
            elif code != 0:
                problems.append(f"load process {name} exited {code} on SIGTERM\n{proc.tail(15)}")
        self._report_resumed(back, resumed)
        problems += self._drain()
        problems += self._check_log()
        problems += self._check_dense()
        problems += self._check_read_model()
        problems += self._check_commands()
        problems += self._stop_workers()
        for name, proc in self.workers.items():
            say(f"[{self.label}] {name} log: {proc.log_summary()}")
        say(
            f"[{self.label}] scenario took {time.monotonic() - self.started_at:.1f}s,"
            f" {len(problems)} problem(s)"
        )
        if problems:
            listing = "\n".join(f"- {p}" for p in problems)
            raise AssertionError(
                f"[{self.label}] {len(problems)} problem(s):\n{listing}\n{self.logs()}"
            )

    def _report_resumed(self, back: float, resumed: float) -> None:
        """How soon each load process was acknowledged after the recovery and after its pause
        (a diagnostic of the store's and the queue's clients, not of the workers)."""

        def first_after(name: str, since: float) -> str:
            wall = time.time() - (time.monotonic() - since)
            after = [r["t"] for r in self._records(name) if r["acked"] and r["t"] >= wall]
            return f"{min(after) - wall:.2f}s" if after else "never"

        for name in self.loads:
            say(
                f"[{self.label}] {name}: first acknowledgement {first_after(name, back)} after"
                f" the recovery, {first_after(name, resumed)} after the load resumed"
            )

    def _drain(self) -> list[str]:
        """Wait until the projection is at every head and no command waits or runs; what did
        not get there (each part is given up early once no worker of its kind is left)."""
        started = time.monotonic()
        behind = waiting = -1
        while True:
            if behind:
                behind = self.rows(
                    "SELECT count(*) FROM {s}.partitions p JOIN {s}.projection_checkpoints c"
                    " USING (partition) WHERE c.projection = %s AND c.position < p.head"
                    " AND c.error IS NULL",
                    (PROJECTION,),
                )[0][0]
            if waiting:
                waiting = self.rows(
                    "SELECT count(*) FROM {s}.commands WHERE status IN ('pending', 'running')"
                )[0][0]
            stuck_projection = behind and not any(
                self.workers[n].alive() for n in PROJECTION_WORKERS
            )
            stuck_commands = waiting and not any(self.workers[n].alive() for n in COMMAND_WORKERS)
            timed_out = time.monotonic() - started > DRAIN_TIMEOUT
            if (not behind or stuck_projection or timed_out) and (
                not waiting or stuck_commands or timed_out
            ):
                break
            time.sleep(0.2)
        say(f"[{self.label}] drain: {time.monotonic() - started:.1f}s, {behind=} {waiting=}")
        problems = []
        if behind:
            why = "no projection worker left" if stuck_projection else f"{DRAIN_TIMEOUT:.0f}s"
            problems.append(f"{behind} partition(s) not caught up with their heads ({why})")
        if waiting:
            why = "no command worker left" if stuck_commands else f"{DRAIN_TIMEOUT:.0f}s"
            problems.append(f"{waiting} command(s) still pending or running ({why})")
        return problems

    def _records(self, name: str) -> list[dict[str, Any]]:
        path = self.dir / f"{name}.jsonl"
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line cut short by a kill
                records.append(json.loads(line))
        return records

    def _check_log(self) -> list[str]:
        """Every acknowledged append stored once, where it was acknowledged; nothing else
        stored."""
        problems: list[str] = []
        stored = {
            str(event_id): (partition, position, stream_id, version)
            for event_id, partition, position, stream_id, version in self.rows(
                "SELECT event_id, partition, position, stream_id, stream_version FROM {s}.events"
            )
        }
        copies = self.rows("SELECT count(*) - count(DISTINCT event_id) FROM {s}.events")[0][0]
        if copies:
            problems.append(f"{copies} event id(s) stored more than once")
        acked: list[dict[str, Any]] = list(self.probe_appends)
        uncertain: set[str] = set(self.probe_uncertain)
        ops = retried = 0
        for name in ("w1", "w2"):
            for record in self._records(name):
                ops += 1
                if record["acked"]:
                    acked += record["appends"]
                    retried += record["tries"] > 1
                else:
                    uncertain.update(record["event_ids"])
                    if "refused" in record:
                        problems.append(
                            f"{name} op {record['op']}: the retry of an append was refused:"
                            f" {record['refused']}"
                        )
        acked_ids: set[str] = set()
        missing = misplaced = 0
        examples: list[str] = []
        for append in acked:
            acked_ids.update(append["event_ids"])
            ids = append["event_ids"]
            if any(i not in stored for i in ids):
                missing += sum(i not in stored for i in ids)
                examples.append(f"missing: {append}")
                continue
            partition, position, stream_id, version = stored[ids[-1]]
            expected = (append["partition"], append["position"], append["stream_id"])
            if (partition, position, stream_id) != expected or version != append["stream_version"]:
                misplaced += 1
                examples.append(f"stored at {stored[ids[-1]]}, acknowledged as {append}")
        phantoms = [i for i in stored if i not in acked_ids and i not in uncertain]
        stored_uncertain = sum(i in stored for i in uncertain)
        say(
            f"[{self.label}] log: {ops} writer ops ({retried} retried until acknowledged),"
            f" {len(acked_ids)} acknowledged events, {len(uncertain)} unacknowledged"
            f" ({stored_uncertain} of them stored), {len(stored)} stored"
        )
        if missing:
            problems.append(f"{missing} acknowledged event(s) not stored: {examples[:3]}")
        if misplaced:
            problems.append(
                f"{misplaced} append(s) stored elsewhere than acknowledged: {examples[:3]}"
            )
        if phantoms:
            problems.append(f"{len(phantoms)} stored event(s) nobody appended: {phantoms[:3]}")
        return problems

    def _check_dense(self) -> list[str]:
        """Every partition holds positions 1..head, each once."""
        problems: list[str] = []
        holes = self.rows(
            "SELECT p.partition, p.head, count(e.position), coalesce(min(e.position), 0),"
            " coalesce(max(e.position), 0) FROM {s}.partitions p"
            " LEFT JOIN {s}.events e USING (partition) GROUP BY p.partition, p.head"
            " HAVING count(e.position) <> p.head OR coalesce(max(e.position), 0) <> p.head"
            " OR (count(e.position) > 0 AND min(e.position) <> 1)"
        )
        if holes:
            problems.append(
                "partitions not dense (partition, head, count, min, max): "
                + ", ".join(str(tuple(h)) for h in holes)
            )
        return problems

    def _check_read_model(self) -> list[str]:
        """Each stored event applied exactly once, nothing else applied, no partition stopped."""
        problems: list[str] = []
        missing = self.rows(
            "SELECT count(*) FROM {s}.events e WHERE NOT EXISTS"
            " (SELECT FROM {s}.fault_applied a WHERE a.event_id = e.event_id)"
        )[0][0]
        doubles = self.rows(
            "SELECT event_id, count(*), array_agg(pid) FROM {s}.fault_applied"
            " GROUP BY event_id HAVING count(*) > 1"
        )
        phantoms = self.rows(
            "SELECT count(*) FROM {s}.fault_applied a WHERE NOT EXISTS"
            " (SELECT FROM {s}.events e WHERE e.event_id = a.event_id"
            " AND e.partition = a.partition AND e.position = a.position)"
        )[0][0]
        stopped = self.rows(
            "SELECT partition, error_position, left(error, 300) FROM {s}.projection_checkpoints"
            " WHERE projection = %s AND error IS NOT NULL",
            (PROJECTION,),
        )
        applied = self.rows("SELECT count(*) FROM {s}.fault_applied")[0][0]
        say(
            f"[{self.label}] read model: {applied} applications, {missing} events not applied,"
            f" {len(doubles)} applied more than once"
        )
        if missing:
            problems.append(f"{missing} stored event(s) never applied by the projection")
        if doubles:
            problems.append(
                f"{len(doubles)} event(s) applied more than once (id, times, pids):"
                f" {[tuple(d) for d in doubles[:3]]}"
            )
        if phantoms:
            problems.append(f"{phantoms} application(s) of events not in the log at that place")
        if stopped:
            problems.append(f"projection partitions stopped on an error: {stopped}")
        return problems

    def _check_commands(self) -> list[str]:
        """Every enqueued command done with exactly one committed effect; the commands that
        ran more than once are counted and printed (at least once allows them)."""
        problems: list[str] = []
        acked: dict[int, int | None] = dict(self.probe_commands)
        uncertain: set[int] = set(self.probe_commands_uncertain)
        for record in self._records("q1"):
            if record["acked"]:
                acked.update(zip(record["ns"], record["ids"], strict=True))
            else:
                uncertain.update(record["ns"])
        effects: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        for n, command_id, attempt, pid in self.rows(
            "SELECT n, command_id, attempt, pid FROM {s}.fault_effects"
        ):
            effects[int(n)].append((int(command_id), int(attempt), int(pid)))
        left = self.rows(
            "SELECT id, queue, status, attempts, max_attempts, worker, left(last_error, 200)"
            " FROM {s}.commands ORDER BY id"
        )
        lost = [n for n in acked if not effects.get(n)]
        doubled = {n: e for n, e in effects.items() if len(e) > 1}
        unknown = [n for n in effects if n not in acked and n not in uncertain]
        wrong_id = [
            (n, acked[n], effects[n][0][0])
            for n in acked
            if len(effects.get(n, ())) == 1 and effects[n][0][0] != acked[n]
        ]
        self.runs.refresh()
        ran_again = {n: runs for n, runs in self.runs.by_n.items() if len(runs) > 1}
        done_uncertain = sum(bool(effects.get(n)) for n in uncertain)
        say(
            f"[{self.label}] commands: {len(acked)} acknowledged enqueues, {len(uncertain)}"
            f" unacknowledged ({done_uncertain} of them ran), {len(left)} left in the queue"
        )
        say(
            f"[{self.label}] commands run more than once: {len(ran_again)}"
            + (
                ": "
                + ", ".join(
                    f"n={n} attempts={[r['attempt'] for r in runs]} pids={[r['pid'] for r in runs]}"
                    for n, runs in list(ran_again.items())[:10]
                )
                if ran_again
                else ""
            )
        )
        if lost:
            problems.append(
                f"{len(lost)} acknowledged command(s) never done (no committed effect):"
                f" n={lost[:10]}"
            )
        if left:
            problems.append(
                f"{len(left)} command(s) left in the queue (id, queue, status, attempts, max,"
                f" worker, error): {[tuple(r) for r in left[:5]]}"
            )
        if doubled:
            problems.append(
                f"{len(doubled)} command(s) with more than one committed effect (the ack's"
                f" fencing failed): {list(doubled.items())[:3]}"
            )
        if unknown or wrong_id:
            problems.append(f"effects of unknown commands: {unknown[:5]} {wrong_id[:5]}")
        return problems

    def _stop_workers(self) -> list[str]:
        """Every worker still running, then stopped by SIGTERM with exit code 0."""
        problems: list[str] = []
        for name, proc in self.workers.items():
            if not proc.alive():
                problems.append(
                    f"worker {name} exited during the scenario with code {proc.returncode}"
                )
        for name, proc in self.workers.items():
            if proc.frozen:
                proc.thaw()
            if not proc.alive():
                continue
            code = proc.terminate(30)
            if code is None:
                problems.append(
                    f"worker {name} did not exit within 30s of SIGTERM; its stacks:\n"
                    + proc.dump_stacks()
                )
            elif code != 0:
                problems.append(f"worker {name} exited {code} on SIGTERM")
        return problems
