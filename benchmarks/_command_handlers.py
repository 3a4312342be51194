"""The benchmark's commands and their handlers, imported by the command worker process.

    python -m eventsource worker run benchmarks._command_handlers --queue bench --schema S

``BenchNoop`` does nothing (``drain``). ``BenchProbe`` records, first thing, the worker's wall
clock when its handler started: one line ``i handler_time`` per command, appended to the file
named by ``BENCH_COMMAND_PROBES`` (``queue_latency``). A file keeps the probe off the database
path that is being measured (no extra statement, no transaction that would change the ack).
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO

from eventsource import Command, CommandContext, handler

__all__ = ["QUEUE", "BenchNoop", "BenchProbe", "noop", "probe"]

QUEUE = "bench"
PROBES_ENV = "BENCH_COMMAND_PROBES"


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


@handler(BenchNoop)
def noop(cmd: BenchNoop, ctx: CommandContext) -> None:
    return None


_lock = threading.Lock()
_probes: IO[str] | None = None


def _probe_file() -> IO[str]:
    global _probes  # noqa: PLW0603 - one file per worker process, opened on first use
    if _probes is None:
        path = os.environ.get(PROBES_ENV)
        if not path:
            raise RuntimeError(f"{PROBES_ENV} is not set: BenchProbe has nowhere to write")
        _probes = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    return _probes


@handler(BenchProbe)
def probe(cmd: BenchProbe, ctx: CommandContext) -> None:
    started = time.time()  # first thing: the handler has the command in hand
    with _lock:
        _probe_file().write(f"{cmd.i} {started!r}\n")
