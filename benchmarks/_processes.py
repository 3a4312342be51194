"""Worker processes for the benchmarks: `python -m eventsource ...` on a run's schema."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from eventsource import EventStore

__all__ = ["ROOT", "log_tail", "start_cli", "stop"]

ROOT = str(Path(__file__).resolve().parent.parent)  # so that `benchmarks` imports


def start_cli(
    store: EventStore, args: list[str], log: IO[bytes], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m eventsource ARGS --schema <the store's>``, its output into ``log``."""
    environ = {
        **os.environ,
        **(env or {}),
        "EVENTSOURCE_DATABASE_URL": store.url.render_as_string(hide_password=False),
        "EVENTSOURCE_SCHEMA": store.schema,
    }
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, environ.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "eventsource", *args, "--schema", store.schema]
    return subprocess.Popen(
        command, env=environ, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT
    )


def log_tail(log: Any) -> str:
    """The last 2,000 characters a worker wrote to its log file."""
    log.flush()
    log.seek(0)
    data: bytes = log.read()
    return data.decode(errors="replace")[-2000:]


def stop(proc: subprocess.Popen[bytes], log: Any, timeout: float, what: str) -> None:
    """SIGTERM, then wait; a worker still running after ``timeout`` is killed and reported."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(
            f"the {what} did not stop within {timeout}s of SIGTERM:\n{log_tail(log)}"
        ) from None
