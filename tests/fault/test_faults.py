"""Database faults under load, with real processes: writers, 2 projection workers and 2
command workers against a disposable PostgreSQL that is crashed, cut off, stopped, or whose
workers are frozen.

After each fault: every acknowledged append is stored once where it was acknowledged, the
partitions are dense, the read model applied each event exactly once, every enqueued command
is done (those run more than once are printed), no worker exited (each then stops on SIGTERM
with exit 0), and the wake-ups (append to applied, enqueue to handler start) are back under
50 ms within 5 s of the recovery.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ._harness import COMMAND_LEASE, PROJECTION_TTL, Scenario, say
from ._server import DisposableServer

pytestmark = pytest.mark.slow

OUTAGE = 30.0  # seconds the server stays stopped
FREEZE = max(12.0, 2 * PROJECTION_TTL + 2, 2 * COMMAND_LEASE + 2)  # seconds workers stay frozen


def test_immediate_restart(fault_server: DisposableServer, tmp_path: Path) -> None:
    """A server crash (immediate-mode restart) under load loses nothing and kills no worker."""
    with Scenario(fault_server, tmp_path, "restart") as scenario:
        scenario.start()
        started = time.monotonic()
        back = fault_server.restart_immediate()
        scenario.pause_load()
        say(f"[restart] the server was away {back - started:.1f}s")
        scenario.finish(back)


def test_terminate_every_client(fault_server: DisposableServer, tmp_path: Path) -> None:
    """pg_terminate_backend of every client connection loses nothing and kills no worker."""
    with Scenario(fault_server, tmp_path, "terminate") as scenario:
        scenario.start()
        terminated = fault_server.terminate_clients()
        back = time.monotonic()
        scenario.pause_load()
        say(f"[terminate] {terminated} client backends terminated")
        scenario.finish(back)


def test_stopped_for_30_seconds(fault_server: DisposableServer, tmp_path: Path) -> None:
    """A server stopped for 30 s is waited out by every worker, and nothing is lost."""
    with Scenario(fault_server, tmp_path, "outage") as scenario:
        scenario.start()
        fault_server.stop("fast")
        scenario.pause_load()
        say(f"[outage] server stopped for {OUTAGE:.0f}s")
        time.sleep(OUTAGE)
        back = fault_server.start()
        say("[outage] the server is back")
        scenario.finish(back)


def test_frozen_workers(fault_server: DisposableServer, tmp_path: Path) -> None:
    """Workers frozen past their lease (SIGSTOP) lose their work to the others, then carry on."""
    with Scenario(fault_server, tmp_path, "freeze") as scenario:
        scenario.start()
        mid_batch = scenario.freeze_in_transaction("p1")
        frozen_at = time.monotonic()
        mid_handler = scenario.freeze_in_transaction("c1", budget=3.0)
        say(
            f"[freeze] p1 frozen {'inside' if mid_batch else 'outside'} a batch transaction,"
            f" c1 {'inside' if mid_handler else 'outside'} a handler's transaction,"
            f" for {FREEZE:.0f}s"
        )
        problems = scenario.takeover(frozen_at, FREEZE)
        for name in ("p1", "c1"):
            scenario.workers[name].thaw()
        back = time.monotonic()
        scenario.finish(back, extra=problems)
