"""The benchmark's commands and their handlers, imported by the command worker process.

    python -m eventsource worker run benchmarks._command_handlers --queue bench --schema S

``BenchNoop`` does nothing (``drain``). ``BenchProbe`` records, first thing, the worker's wall
clock when its handler started: one line ``i handler_time`` per command, appended to the file
named by ``BENCH_COMMAND_PROBES`` (``queue_latency``). ``BenchLink`` does nothing but record
the wall clock when its handler started (its first act) and when it returns (its last act): one
line ``i start end`` per command in the file named by ``BENCH_COMMAND_LINKS``
(``ordering_latency``). A file keeps the probe off the database path that is being
measured (no extra statement, no transaction that would change the ack).
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO

from eventsource import Command, CommandContext, handler

__all__ = ["QUEUE", "BenchLink", "BenchNoop", "BenchProbe", "link", "noop", "probe"]

QUEUE = "bench"
PROBES_ENV = "BENCH_COMMAND_PROBES"  # BenchProbe: handler start times
LINKS_ENV = "BENCH_COMMAND_LINKS"  # BenchLink: handler start and return times


class BenchNoop(Command, name="bench.Noop", queue=QUEUE):
    """A small command (~60 bytes of JSON, like the benchmark's events) that does nothing."""

    account_id: str
    amount: int
    i: int


class BenchProbe(Command, name="bench.Probe", queue=QUEUE):
    """A command whose handler records when it started; ``i`` identifies it."""

    account_id: str
    amount: int
    i: int


class BenchLink(Command, name="bench.Link", queue=QUEUE):
    """A command whose handler records when it started and when it returned; in between it
    sleeps ``sleep_ms`` (0: does nothing)."""

    account_id: str
    amount: int
    i: int
    sleep_ms: float = 0.0


@handler(BenchNoop)
def noop(cmd: BenchNoop, ctx: CommandContext) -> None:
    return None


_lock = threading.Lock()
_files: dict[str, IO[str]] = {}  # env var -> its file: one per worker process, opened on first use


def _record(env: str, what: str, line: str) -> None:
    """Append ``line`` to the file named by the environment variable ``env``."""
    with _lock:
        file = _files.get(env)
        if file is None:
            path = os.environ.get(env)
            if not path:
                raise RuntimeError(f"{env} is not set: {what} has nowhere to write")
            file = _files[env] = open(path, "a", buffering=1)  # noqa: SIM115 - process-long
        file.write(line)


@handler(BenchProbe)
def probe(cmd: BenchProbe, ctx: CommandContext) -> None:
    started = time.time()  # first thing: the handler has the command in hand
    _record(PROBES_ENV, "BenchProbe", f"{cmd.i} {started!r}\n")


@handler(BenchLink)
def link(cmd: BenchLink, ctx: CommandContext) -> None:
    started = time.time()  # first act: the handler has the command in hand
    if cmd.sleep_ms:
        time.sleep(cmd.sleep_ms / 1000)
    _record(LINKS_ENV, "BenchLink", f"{cmd.i} {started!r} {time.time()!r}\n")  # last act
