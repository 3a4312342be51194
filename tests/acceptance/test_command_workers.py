"""Command workers as real processes (`eventsource worker run`, `eventsource commands ...`):
SIGKILLed, SIGSTOPped past their lease, SIGTERMed with work in flight; poison commands,
ordering keys, rolled-back enqueues and bad command lines."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy import text

from eventsource import CommandQueue, EventStore
from eventsource.db import quote_schema

from ._command_support import Garbled, Poison, Work, create_tables
from ._projection_support import one_line_error, run_no_tty, wait_until
from ._support import REPO_ROOT, cli_env, describe, run_cli

HANDLERS = "tests.acceptance._command_support"


class WorkerProcess:
    """One `python -m eventsource worker run` process, its output going to a log file."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventsource", "worker", "run", HANDLERS, *args],
            env=dict(env),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def output(self, last: int = 4000) -> str:
        """The end of the log, for assertion messages."""
        return f"--- {self.name} (pid {self.pid})\n{self.log_text()[-last:]}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def started(self) -> bool:
        """Whether the worker has logged that it runs (fails the test if it exited)."""
        assert self.alive(), self.output()
        return "worker started" in self.log_text()

    def kill(self) -> int:
        """SIGKILL: no chance to release, ack or record anything."""
        self.process.kill()
        return self.process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the process, its handlers and its heartbeat stall."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def terminate(self, timeout: float) -> int:
        """SIGTERM, and the exit code within ``timeout`` seconds (it fails the test if not)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.name} did not exit within {timeout}s of SIGTERM\n" + self.output()
            ) from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process cannot be reaped
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def env(database_url: str, schema: str) -> dict[str, str]:
    """The workers' and CLI's environment: the server, the test's schema, fast retries."""
    return cli_env(
        database_url,
        EVENTSOURCE_SCHEMA=schema,
        EVENTSOURCE_COMMAND_BACKOFF_BASE="0.05",
        EVENTSOURCE_LOG_FORMAT="json",
    )


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    """Starts worker processes (``start_worker(name, "--lease", "1", ...)``); kills whatever
    is left of them on the way out."""
    started: list[WorkerProcess] = []

    def start(name: str, *args: str) -> WorkerProcess:
        worker = WorkerProcess(name, args, env, tmp_path)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.close()


@pytest.fixture
def queue(store: EventStore) -> CommandQueue:
    """The queue of the test's schema, with the handlers' tables created next to it."""
    create_tables(store)
    return CommandQueue(store)


def rows(store: EventStore, sql: str, **params: Any) -> list[Any]:
    """Rows of ``sql``, where ``{s}`` stands for the test's (quoted) schema."""
    with store.engine.connect() as conn:
        return list(conn.execute(text(sql.format(s=quote_schema(store.schema))), params))


def execute(store: EventStore, sql: str, **params: Any) -> None:
    """Run ``sql`` (``{s}``: the test's schema) in a transaction of its own."""
    with store.engine.begin() as conn:
        conn.execute(text(sql.format(s=quote_schema(store.schema))), params)


def count(store: EventStore, sql: str, **params: Any) -> int:
    return int(rows(store, sql, **params)[0][0])


def queue_empty(store: EventStore) -> bool:
    """No command left: every one done (acks delete them), none pending, running or dead."""
    return count(store, "SELECT count(*) FROM {s}.commands") == 0


def effects_by_command(store: EventStore) -> dict[int, list[tuple[int, int]]]:
    """Committed effects: command id -> [(attempt, pid), ...]."""
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for command_id, attempt, pid in rows(
        store, "SELECT command_id, attempt, pid FROM {s}.effects ORDER BY id"
    ):
        out[command_id].append((attempt, pid))
    return dict(out)


def open_gate(store: EventStore, n: int) -> None:
    """Let the first attempt of the gated command ``n`` finish."""
    execute(store, "INSERT INTO {s}.gates VALUES (:n)", n=n)


def wait_started(*workers: WorkerProcess) -> None:
    for worker in workers:
        wait_until(worker.started, 30, f"worker {worker.name} to start")


def outputs(*workers: WorkerProcess) -> str:
    return "\n".join(w.output() for w in workers)


# -- tests -----------------------------------------------------------------------------------


RUNS_OF = "SELECT pid FROM {s}.runs WHERE command_id = :id ORDER BY started_at"


def warm_up(store: EventStore, queue: CommandQueue) -> list[int]:
    """Run six quick commands through the (single-slot) worker, one by one; their ids.

    A slot claims one command until it has timed a handler, then about 0.1 s of work at once
    (by a moving average that halves the weight of older calls): after this, commands
    committed together are claimed in one batch, even if one warm-up call was slow because
    the machine was busy.
    """
    ids = []
    for _ in range(6):
        command_id = queue.enqueue(Work(n=0)).id
        assert command_id is not None
        wait_until(lambda c=command_id: c in effects_by_command(store), 30, "a warm-up command")
        ids.append(command_id)
    return ids


def test_a_killed_worker_loses_nothing_and_its_running_commands_are_rerun(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker
) -> None:
    """Three workers drain 300 commands; one is SIGKILLed mid-run and another joins; every
    command ends done with exactly one committed effect, nothing is dead, and the commands
    the killed worker was running are run again by the others."""
    args = ("--concurrency", "4", "--lease", "1", "--poll-interval", "0.2")
    victim, w2, w3 = (start_worker(name, *args) for name in ("victim", "w2", "w3"))
    wait_started(victim, w2, w3)
    ids: list[int] = []
    for chunk in range(30):  # in chunks, so that every worker's slots get some
        ids += queue.enqueue_many([Work(n=chunk * 10 + i, sleep=0.03) for i in range(10)])
    assert len(set(ids)) == 300

    open_runs = "SELECT command_id FROM {s}.runs WHERE pid = :pid AND ended_at IS NULL"
    wait_until(lambda: count(store, "SELECT count(*) FROM {s}.effects") >= 40, 30, "progress")

    def victim_frozen_mid_run() -> bool:
        """SIGSTOP the victim; true if it is running handlers, else let it go on."""
        victim.freeze()
        time.sleep(0.05)  # statements it sent before stopping complete
        if rows(store, open_runs, pid=victim.pid):
            return True
        victim.thaw()
        return False

    wait_until(victim_frozen_mid_run, 30, "the victim to be running handlers")
    interrupted = [command_id for (command_id,) in rows(store, open_runs, pid=victim.pid)]
    assert victim.kill() == -signal.SIGKILL
    assert interrupted, "the victim was killed while running no handler"
    w4 = start_worker("w4", *args)

    wait_until(lambda: queue_empty(store), 60, "every command to be done")
    assert all(w.alive() for w in (w2, w3, w4)), outputs(w2, w3, w4)
    effects = effects_by_command(store)
    assert sorted(effects) == sorted(ids)
    assert [i for i, done in effects.items() if len(done) != 1] == []  # each exactly once
    assert count(store, "SELECT count(*) FROM {s}.effects") == 300
    survivors = {w2.pid, w3.pid, w4.pid}
    for command_id in interrupted:
        [(attempt, pid)] = effects[command_id]
        assert pid in survivors
        # Started by the victim, run again by a survivor. (Its attempt counts from its start:
        # unless the victim died within a moment of that start, the rerun is attempt 2.)
        started_by = [r[0] for r in rows(store, RUNS_OF, id=command_id)]
        assert victim.pid in started_by and len(started_by) >= 2, (command_id, started_by)
        assert attempt >= 1
    assert queue.dead() == []


def test_a_poison_command_is_dead_lettered_and_retried_from_the_cli(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker, env: dict[str, str]
) -> None:
    """A command whose handler keeps failing is dead after max_attempts, shown by `commands
    dead --json` with its error and traceback (and not by `commands list`), while other
    commands flow; once the handler is fixed, `commands retry ID` makes the running worker
    complete it."""
    worker = start_worker("w", "--concurrency", "2", "--lease", "2", "--poll-interval", "0.2")
    bad = queue.enqueue(Poison(n=1), max_attempts=3).id
    good = queue.enqueue(Work(n=2)).id
    assert bad is not None and good is not None

    def dead() -> bool:
        info = queue.get(bad)
        return info is not None and info.status == "dead"

    wait_until(dead, 30, "the poison command to be dead")
    wait_until(lambda: good in effects_by_command(store), 30, "the healthy command to be done")
    attempts = rows(
        store, "SELECT attempt FROM {s}.runs WHERE command_id = :id ORDER BY id", id=bad
    )
    assert [a for (a,) in attempts] == [1, 2, 3]

    shown = run_cli(["commands", "dead", "--json"], env)
    assert shown.returncode == 0, describe(shown)
    [entry] = json.loads(shown.stdout)
    assert (entry["id"], entry["status"], entry["attempts"], entry["max_attempts"]) == (
        bad,
        "dead",
        3,
        3,
    )
    assert entry["command_type"] == "acceptance.Poison"
    assert entry["last_error"] == "PoisonError: poison command 1 is not fixed yet"
    assert entry["traceback"].startswith("Traceback (most recent call last)"), entry
    assert "_command_support.py" in entry["traceback"]
    assert "PoisonError: poison command 1 is not fixed yet" in entry["traceback"]
    table = run_cli(["commands", "dead"], env)
    assert table.returncode == 0, describe(table)
    assert "PoisonError" in table.stdout
    listed = run_cli(["commands", "list", "--json"], env)
    assert listed.returncode == 0, describe(listed)
    assert json.loads(listed.stdout) == []  # dead commands are not live

    execute(store, "INSERT INTO {s}.fixed VALUES (1)")  # the handler is "fixed"
    retried = run_cli(["commands", "retry", str(bad)], env)
    assert retried.returncode == 0, describe(retried)
    assert f"command {bad}: pending again" in retried.stdout
    wait_until(lambda: queue_empty(store), 15, "the retried command to be done")
    assert worker.alive(), worker.output()
    assert effects_by_command(store)[bad] == [(4, worker.pid)]
    shown = run_cli(["commands", "dead", "--json"], env)
    assert shown.returncode == 0, describe(shown)
    assert json.loads(shown.stdout) == []


def test_commands_sharing_an_ordering_key_run_one_at_a_time_in_enqueue_order(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker
) -> None:
    """Across three worker processes, the commands of one ordering key never overlap and run
    in enqueue order, while commands of different keys run in parallel."""
    args = ("--concurrency", "2", "--lease", "5", "--poll-interval", "0.1")
    workers = [start_worker(name, *args) for name in ("w1", "w2", "w3")]
    wait_started(*workers)
    keys, per_key = 4, 6
    ids: dict[str, list[int]] = defaultdict(list)
    # One by one while the workers wait, interleaved: without the ordering rule, the
    # commands of one key would be claimed by several slots at once.
    for i in range(per_key):
        for k in range(keys):
            enqueued = queue.enqueue(Work(n=i, key=f"k{k}", sleep=0.1), ordering_key=f"k{k}")
            assert enqueued.id is not None
            ids[f"k{k}"].append(enqueued.id)

    wait_until(lambda: queue_empty(store), 60, "every command to be done")
    assert all(w.alive() for w in workers), outputs(*workers)
    runs = rows(
        store,
        "SELECT key, command_id, n, attempt, pid, started_at, ended_at FROM {s}.runs"
        " ORDER BY started_at",
    )
    assert len(runs) == keys * per_key
    assert {r.attempt for r in runs} == {1}
    by_key: dict[str, list[Any]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    for key, key_runs in by_key.items():
        assert [r.command_id for r in key_runs] == ids[key], key  # in enqueue order
        for before, after in itertools.pairwise(key_runs):
            assert before.ended_at <= after.started_at, (key, before, after)  # no overlap

    def overlap(a: Any, b: Any) -> bool:
        return bool(a.started_at < b.ended_at and b.started_at < a.ended_at)

    parallel = [(a, b) for a in runs for b in runs if a.key < b.key and overlap(a, b)]
    assert parallel, "commands of different keys never ran at the same time"
    assert len({r.pid for r in runs}) >= 2, "a single worker process ran everything"


@pytest.mark.parametrize(
    "resumed",
    ["after-the-rescuers-ack", "while-the-rescuer-runs"],
)
def test_a_stalled_worker_past_its_lease_cannot_ack_the_reclaimed_command(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker, resumed: str
) -> None:
    """A worker SIGSTOPped mid-handler loses its lease (its heartbeat stops); another worker
    reclaims the command; the stalled one is SIGCONTed after the rescuer's ack (the command is
    gone) or while the rescuer's attempt still runs (the command is there, with a new lease
    token): either way its late ack does not count and its transaction rolls back, so the
    command has exactly one effect, the rescuer's; the zombie logs that its result was
    dropped and then carries on working."""
    args = ("--concurrency", "1", "--lease", "1", "--poll-interval", "0.2")
    zombie = start_worker("zombie", *args)
    wait_started(zombie)
    during = resumed == "while-the-rescuer-runs"
    # The first attempt waits for the test's gate, so it is still running when frozen.
    command_id = queue.enqueue(Work(n=1, gated=True, sleep=2.5 if during else 0.0)).id
    assert command_id is not None
    attempt = "SELECT count(*) FROM {s}.runs WHERE command_id = :id AND attempt = :attempt"

    wait_until(lambda: count(store, attempt, id=command_id, attempt=1) == 1, 30, "attempt 1")
    zombie.freeze()
    rescuer = start_worker("rescuer", *args)
    if during:
        wait_until(lambda: count(store, attempt, id=command_id, attempt=2) == 1, 30, "attempt 2")
        assert not queue_empty(store)
    else:
        wait_until(lambda: queue_empty(store), 30, "the rescuer to reclaim and complete it")
        assert effects_by_command(store) == {command_id: [(2, rescuer.pid)]}

    open_gate(store, 1)
    zombie.thaw()
    ended = (
        "SELECT count(*) FROM {s}.runs WHERE command_id = :id AND attempt = 1"
        " AND ended_at IS NOT NULL"
    )
    wait_until(lambda: count(store, ended, id=command_id) == 1, 15, "the zombie's handler to end")
    wait_until(
        lambda: "lease lost; result dropped" in zombie.log_text(), 15, "the zombie's late ack"
    )
    wait_until(lambda: queue_empty(store), 15, "the rescuer to complete it")
    assert effects_by_command(store) == {command_id: [(2, rescuer.pid)]}  # exactly one
    attempts = rows(
        store, "SELECT attempt, pid FROM {s}.runs WHERE command_id = :id ORDER BY id", id=command_id
    )
    assert [tuple(a) for a in attempts] == [(1, zombie.pid), (2, rescuer.pid)]
    if during:  # the zombie's ack came while the command was there, with the rescuer's token
        ended_at = rows(
            store, "SELECT ended_at FROM {s}.runs WHERE command_id = :id ORDER BY id", id=command_id
        )
        assert ended_at[0][0] < ended_at[1][0]
    assert "lease lost" not in rescuer.log_text()

    assert rescuer.terminate(timeout=10) == 0, rescuer.output()
    later = queue.enqueue(Work(n=2)).id
    assert later is not None
    wait_until(lambda: queue_empty(store), 15, "the zombie to work again")
    assert effects_by_command(store)[later] == [(1, zombie.pid)]


def test_heartbeats_keep_a_handler_longer_than_the_lease_to_its_worker(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker
) -> None:
    """A handler running for 2.5 leases on a live worker keeps its lease (heartbeats extend
    it) while another worker watches: it runs once and is acked once."""
    args = ("--concurrency", "1", "--lease", "1", "--poll-interval", "0.2")
    runner = start_worker("runner", *args)
    wait_started(runner)
    command_id = queue.enqueue(Work(n=1, first_sleep=2.5)).id
    started = "SELECT count(*) FROM {s}.runs WHERE command_id = :id"
    wait_until(lambda: count(store, started, id=command_id) == 1, 30, "the handler to start")
    watcher = start_worker("watcher", *args)
    wait_started(watcher)
    wait_until(lambda: queue_empty(store), 30, "the long handler to finish")
    assert effects_by_command(store) == {command_id: [(1, runner.pid)]}
    assert count(store, started, id=command_id) == 1  # never reclaimed
    assert "reclaimed" not in watcher.log_text() + runner.log_text()


def test_sigterm_finishes_running_handlers_releases_the_rest_and_exits_0(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker
) -> None:
    """SIGTERM with commands in flight: the running handlers finish and are acked, claimed
    commands not yet started are released without spending an attempt, the worker exits 0;
    a new worker does the rest; every command has one effect, none ran twice, none is dead."""
    args = ("--concurrency", "2", "--lease", "5", "--grace", "10", "--poll-interval", "0.2")
    first = start_worker("first", *args)
    ids = queue.enqueue_many([Work(n=i, sleep=0.25) for i in range(12)])

    def in_flight() -> bool:
        open_runs = "SELECT count(*) FROM {s}.runs WHERE ended_at IS NULL"
        return count(store, "SELECT count(*) FROM {s}.effects") >= 2 and count(store, open_runs) > 0

    wait_until(in_flight, 30, "the worker to be mid-run")
    assert first.terminate(timeout=10) == 0, first.output()
    assert "worker stopped" in first.log_text()
    assert count(store, "SELECT count(*) FROM {s}.runs WHERE ended_at IS NULL") == 0
    done = effects_by_command(store)
    ran = rows(store, "SELECT command_id, attempt FROM {s}.runs")
    assert sorted(done) == sorted(command_id for command_id, _ in ran)  # all finished, acked
    left = queue.list(limit=1000)
    assert left, "nothing was left to release"
    assert len(left) + len(done) == 12
    assert {(c.status, c.attempts, c.worker) for c in left} == {("pending", 0, None)}

    second = start_worker("second", *args)
    wait_until(lambda: queue_empty(store), 30, "the second worker to finish")
    assert second.alive(), second.output()
    effects = effects_by_command(store)
    assert sorted(effects) == sorted(ids)
    assert {c: [a for a, _ in e] for c, e in effects.items()} == {c: [1] for c in ids}
    assert count(store, "SELECT count(*) FROM {s}.runs") == 12  # none ran twice


def test_sigterm_past_the_grace_period_gives_the_attempt_back(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker
) -> None:
    """A handler still running when the grace period ends is abandoned: the worker exits 0
    without committing its effect, the attempt is recorded as failed, and another worker
    completes the command (one effect, attempt 2)."""
    args = ("--concurrency", "1", "--lease", "2", "--grace", "0.5", "--poll-interval", "0.2")
    first = start_worker("first", *args)
    command_id = queue.enqueue(Work(n=1, first_sleep=5.0)).id
    assert command_id is not None
    started = "SELECT count(*) FROM {s}.runs WHERE command_id = :id"
    wait_until(lambda: count(store, started, id=command_id) == 1, 30, "the handler to start")
    began = time.monotonic()
    assert first.terminate(timeout=5) == 0, first.output()
    assert time.monotonic() - began < 4  # did not wait for the handler
    info = queue.get(command_id)
    assert info is not None
    assert (info.status, info.attempts) == ("pending", 1)
    assert info.last_error is not None and info.last_error.startswith("WorkerShutdown"), info

    second = start_worker("second", *args)
    wait_until(lambda: queue_empty(store), 30, "the second worker to complete it")
    assert effects_by_command(store) == {command_id: [(2, second.pid)]}


def test_sigterm_releases_a_claimed_command_whose_dedupe_key_was_enqueued_again(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker
) -> None:
    """A command claimed (in a batch) but not started no longer holds its dedupe key, so the
    key can be enqueued again; SIGTERM still releases the claimed one cleanly and promptly,
    and both commands then run once."""
    args = ("--concurrency", "1", "--lease", "2", "--grace", "10", "--poll-interval", "0.2")
    first = start_worker("first", *args)
    warm_up(store, queue)  # the slot has timed a quick handler: it now claims in batches
    with store.transaction() as tx:  # one commit, one wake-up: n=1 and n=2 claimed together
        queue.enqueue(Work(n=1, gated=True), tx=tx)
        claimed = queue.enqueue(Work(n=2), dedupe_key="statement-42", tx=tx)
    assert claimed.id is not None and not claimed.duplicate
    wait_until(lambda: count(store, "SELECT count(*) FROM {s}.runs") == 7, 30, "n=1 to start")
    info = queue.get(claimed.id)
    assert info is not None and info.status == "running"  # claimed with n=1, not started
    again = queue.enqueue(Work(n=3), dedupe_key="statement-42")
    assert not again.duplicate

    began = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the worker stops claiming at once; then n=1 ends and n=2 is released
    open_gate(store, 1)
    assert first.terminate(timeout=15) == 0, first.output()
    took = time.monotonic() - began
    assert "Traceback" not in first.log_text(), first.output()
    assert count(store, "SELECT count(*) FROM {s}.commands WHERE status = 'running'") == 0
    assert took < 3, f"SIGTERM took {took:.1f}s"
    released = queue.get(claimed.id)
    assert released is not None and (released.status, released.attempts) == ("pending", 0)

    start_worker("second", *args)
    wait_until(lambda: queue_empty(store), 30, "the second worker to finish")
    assert sorted(n for (n,) in rows(store, "SELECT n FROM {s}.effects")) == [0] * 6 + [1, 2, 3]


def test_a_command_enqueued_in_a_rolled_back_transaction_is_never_delivered(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker
) -> None:
    """With a worker running, a command enqueued in a transaction that rolls back never runs,
    while those enqueued in a committed transaction and on their own do."""
    worker = start_worker("w", "--concurrency", "2", "--lease", "2", "--poll-interval", "0.2")
    wait_started(worker)
    with pytest.raises(RuntimeError, match="roll back"), store.transaction() as tx:
        rolled_back = queue.enqueue(Work(n=1), tx=tx).id
        raise RuntimeError("roll back")
    with store.transaction() as tx:
        committed = queue.enqueue(Work(n=2), tx=tx).id
    alone = queue.enqueue(Work(n=3)).id
    assert rolled_back is not None and committed is not None and alone is not None
    assert rolled_back < committed < alone  # it would have been claimed first

    wait_until(
        lambda: {committed, alone} <= set(effects_by_command(store)),
        30,
        "the committed commands to be done",
    )
    assert queue_empty(store)
    assert queue.get(rolled_back) is None
    assert sorted(effects_by_command(store)) == [committed, alone]
    assert count(store, "SELECT count(*) FROM {s}.runs WHERE n = 1") == 0
    assert worker.alive(), worker.output()


def test_bad_command_lines_exit_with_one_line(
    store: EventStore, queue: CommandQueue, env: dict[str, str]
) -> None:
    """An unknown handler module and a malformed duration exit 2, retrying a command that
    does not exist or is not dead exits 1, each with one line saying what is wrong."""
    missing = run_no_tty(["worker", "run", "no.such.module"], env)
    assert missing.returncode == 2, describe(missing)
    assert "'no.such.module'" in one_line_error(missing)

    no_handlers = run_no_tty(["worker", "run", "json"], env)
    assert no_handlers.returncode == 2, describe(no_handlers)
    assert "no command handlers are registered" in one_line_error(no_handlers)

    unknown = run_no_tty(["commands", "retry", "999999"], env)
    assert unknown.returncode == 1, describe(unknown)
    line = one_line_error(unknown)
    assert "999999" in line and "no such command" in line, line

    pending = queue.enqueue(Work(n=1)).id
    assert pending is not None
    not_dead = run_no_tty(["commands", "retry", str(pending)], env)
    assert not_dead.returncode == 1, describe(not_dead)
    assert "it is pending, not dead" in one_line_error(not_dead)
    assert queue.get(pending) is not None  # untouched

    duration = run_no_tty(["commands", "purge", "--older-than", "3x", "--yes"], env)
    assert duration.returncode == 2, describe(duration)
    assert "invalid duration '3x'" in one_line_error(duration)
    for args in (["commands", "purge", "--older-than", "3x"], ["commands", "purge"]):
        refused = run_no_tty(args, env)
        assert refused.returncode == 2, describe(refused)
        one_line_error(refused)


def test_a_worker_without_its_database_or_schema_exits_1_at_once(
    store: EventStore, env: dict[str, str]
) -> None:
    """An unreachable server, or a schema that was never upgraded, is one line and exit 1,
    not a worker logging failures forever."""
    module = "tests.acceptance._command_support"
    down = {**env, "EVENTSOURCE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"}
    unreachable = run_no_tty(["worker", "run", module], down)
    assert unreachable.returncode == 1, describe(unreachable)
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/nowhere" in one_line_error(unreachable)

    bare = {**env, "EVENTSOURCE_SCHEMA": f"{store.schema}_never"}
    missing = run_no_tty(["worker", "run", module], bare)
    assert missing.returncode == 1, describe(missing)
    assert "eventsource db upgrade" in one_line_error(missing)


# -- regressions -------------------------------------------------------------------------------


def test_a_handler_error_holding_a_nul_character_is_recorded_and_the_worker_carries_on(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker
) -> None:
    """An exception whose message holds a NUL character (PostgreSQL text refuses it) is still
    recorded: the command ends dead with its error, and the worker runs the next command."""
    garbled = queue.enqueue(Garbled(n=1), max_attempts=2).id
    after = queue.enqueue(Work(n=2)).id
    assert garbled is not None and after is not None
    worker = start_worker("w", "--concurrency", "1", "--lease", "1", "--poll-interval", "0.2")

    def settled() -> bool:
        info = queue.get(garbled)
        crashed = "Exception in thread" in worker.log_text()
        return crashed or (
            info is not None and info.status == "dead" and after in effects_by_command(store)
        )

    wait_until(settled, 30, "the garbled command to be dead and the next one done")
    assert "Exception in thread" not in worker.log_text(), worker.output()
    assert "slot failed" not in worker.log_text(), worker.output()
    info = queue.get(garbled)
    assert info is not None and info.status == "dead", info
    assert info.last_error is not None and "undecodable input for command 1" in info.last_error
    assert effects_by_command(store)[after] == [(1, worker.pid)]


def test_sigterm_past_the_grace_period_releases_commands_that_never_started(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker
) -> None:
    """When the grace period ends with a handler still running, the commands claimed behind it
    that never started are released (no attempt spent), not failed or dead-lettered."""
    args = ("--concurrency", "1", "--lease", "2", "--grace", "0.5", "--poll-interval", "0.2")
    first = start_worker("first", *args)
    warm = warm_up(store, queue)  # the slot now claims in batches
    with store.transaction() as tx:  # claimed together: n=1 runs, n=2 and n=3 wait behind it
        slow = queue.enqueue(Work(n=1, first_sleep=5.0), max_attempts=3, tx=tx).id
        waiting = queue.enqueue_many([Work(n=2), Work(n=3)], max_attempts=1, tx=tx)
    assert slow is not None
    wait_until(lambda: count(store, "SELECT count(*) FROM {s}.runs") == 7, 30, "n=1 to start")
    claimed = "SELECT count(*) FROM {s}.commands WHERE status = 'running'"
    assert count(store, claimed) >= 2  # one claim took n=1 and what waits behind it
    assert first.terminate(timeout=5) == 0, first.output()
    for command_id in waiting:
        info = queue.get(command_id)
        assert info is not None
        assert (info.status, info.attempts, info.last_error) == ("pending", 0, None), info

    second = start_worker("second", *args)
    wait_until(lambda: queue_empty(store) or bool(queue.dead()), 30, "the second worker")
    assert queue.dead() == []
    effects = effects_by_command(store)
    assert sorted(effects) == sorted([*warm, slow, *waiting])
    assert effects[slow] == [(2, second.pid)]


def test_commands_waiting_when_a_worker_starts_run_on_all_its_slots(
    store: EventStore, queue: CommandQueue, start_worker: StartWorker
) -> None:
    """Eight 0.25 s commands waiting for a worker with four slots run on (nearly) all of them,
    not all in the first slot that claims (0.5 s of work per slot instead of 2 s in one)."""
    queue.enqueue_many([Work(n=i, sleep=0.25) for i in range(8)])
    worker = start_worker("w", "--concurrency", "4", "--lease", "5", "--poll-interval", "0.2")
    wait_until(lambda: queue_empty(store), 30, "every command to be done")
    runs = rows(store, "SELECT pid, started_at, ended_at FROM {s}.runs")
    assert {r.pid for r in runs} == {worker.pid}
    peak = max(sum(1 for b in runs if b.started_at <= a.started_at < b.ended_at) for a in runs)
    assert peak >= 3, f"at most {peak} of 4 slots ran at once"


def test_a_worker_serves_its_metrics_when_asked(
    queue: CommandQueue, env: dict[str, str], start_worker: StartWorker
) -> None:
    """With EVENTSOURCE_METRICS_PORT a worker process serves its metrics for Prometheus: the
    attempts of the commands it ran, by queue, type and outcome."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env["EVENTSOURCE_METRICS_PORT"] = str(port)
    queue.enqueue(Work(n=1))
    worker = start_worker("metrics")
    page: list[str] = []

    def scraped() -> bool:
        assert worker.alive(), worker.output()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                page[:] = r.read().decode().splitlines()
        except OSError:
            return False
        return any(line.startswith("eventsource_command_attempts_total") for line in page)

    wait_until(scraped, 30, "the worker's metrics")
    (attempts,) = [line for line in page if line.startswith("eventsource_command_attempts_total")]
    assert 'eventsource_command_outcome="succeeded"' in attempts
    assert 'eventsource_command_type="acceptance.Work"' in attempts
    assert attempts.endswith(" 1.0")
