"""The worker runtime: what every long-running worker kind shares.

Projection workers, command workers and reactors are one kind of process. This module holds
the parts they have in common, so that each worker kind supplies only its loop body:

- ``Backoff``: exponential delays with jitter, for reconnecting after an outage;
- ``connect``: a worker's own autocommit connection (URL parameters kept, TCP keepalives);
- ``Listener``: a LISTEN connection that is re-established after every loss, and says so,
  so that the worker reads once to catch up on what was announced in the gap;
- ``Supervisor``: threads whose unexpected death stops the worker and makes ``run`` raise
  ``WorkerCrashed`` (the CLI then exits non-zero), so that no worker lives on as a zombie;
- ``is_outage``: the one rule for what counts as an outage (see ``_core.is_outage``).

An outage is waited out, never fatal: only connection-class failures count as one, and
everything else is the error of the work in hand.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from ._core import conninfo, first_line, is_outage
from ._errors import WorkerCrashed

__all__ = [
    "Backoff",
    "Listener",
    "Supervisor",
    "WorkerCrashed",
    "connect",
    "default_worker_id",
    "first_line",
    "is_outage",
]


def default_worker_id() -> str:
    """``host:pid:random``: unique per worker, readable in ``status``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Backoff:
    """Delays that double from ``base`` up to ``cap``, each drawn in [0.5, 1] of its ceiling."""

    def __init__(self, base: float = 0.1, cap: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        """The delay before the next attempt (one more failure counted)."""
        self.failures += 1
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 30))
        return ceiling * (0.5 + random.random() / 2)

    def reset(self) -> bool:
        """Forget the failures; whether there were any (the outage just ended)."""
        failed, self.failures = self.failures > 0, 0
        return failed


def connect(url: URL, *, prepare_threshold: int | None = None) -> psycopg.Connection[Any]:
    """A new autocommit connection of the worker's own (not from a pool)."""
    return psycopg.connect(conninfo(url), autocommit=True, prepare_threshold=prepare_threshold)


class Listener:
    """A LISTEN connection that comes back after every loss.

    ``wait`` returns True when a notification arrived or the connection was (re-)established,
    since anything announced while it was down was missed: the caller reads once to catch up.
    While the server is unreachable, ``wait`` sleeps its timeout and tries again with backoff.
    """

    def __init__(self, url: URL, statements: Iterable[str], log: Any) -> None:
        self._url = url
        self._statements = list(statements)
        self._log = log
        self._conn: psycopg.Connection[Any] | None = None
        self._backoff = Backoff(0.05, 2.0)
        self._retry_at = 0.0
        self._lost = False

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def open(self) -> bool:
        """Connect and LISTEN now (if not already); whether it is listening."""
        if self.listening:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = connect(self._url)
            for statement in self._statements:
                conn.execute(statement)
        except psycopg.Error as exc:
            if conn is not None:
                with suppress(psycopg.Error):
                    conn.close()
            delay = self._backoff.next()
            self._retry_at = now + delay
            if self._backoff.failures == 1:
                self._log.warning("LISTEN unavailable; retrying", error=first_line(exc))
            return False
        self._conn = conn
        self._backoff.reset()
        if self._lost:
            self._log.info("LISTEN restored")
            self._lost = False
        return True

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Sleep until a notification, a (re)connection, ``stop`` or the timeout."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            if not self.listening:
                if self.open():
                    return True  # catch up on what was announced while deaf
                now = time.monotonic()
                if now >= deadline:
                    return False
                stop.wait(min(deadline, max(self._retry_at, now + 0.01)) - now)
                continue
            left = min(deadline - time.monotonic(), 0.25)  # stay responsive to stop
            if left <= 0:
                return False
            assert self._conn is not None
            try:
                for _ in self._conn.notifies(timeout=left, stop_after=1):
                    return True
            except psycopg.Error as exc:
                self._drop(exc)
        return False

    def _drop(self, exc: BaseException) -> None:
        self._log.warning("LISTEN connection lost; reconnecting", error=first_line(exc))
        self._lost = True
        self.close()
        self._retry_at = time.monotonic() + self._backoff.next()

    def close(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


class Supervisor:
    """Starts a worker's threads; the first that dies unexpectedly stops the whole worker.

    ``on_crash`` is called once (from the dying thread) to ask the worker to stop;
    ``check()`` raises ``WorkerCrashed`` from the thread's exception afterwards.
    """

    def __init__(self, log: Any, on_crash: Callable[[], None]) -> None:
        self._log = log
        self._on_crash = on_crash
        self._lock = threading.Lock()
        self.failure: BaseException | None = None
        self.failed_thread: str | None = None

    def spawn(self, target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
        """Start ``target(*args)`` on a daemon thread that is watched."""

        def watched() -> None:
            try:
                target(*args)
            except BaseException as exc:  # any death is fatal to the worker
                self.crashed(name, exc)

        thread = threading.Thread(target=watched, name=name, daemon=True)
        thread.start()
        return thread

    def crashed(self, name: str, exc: BaseException) -> None:
        """Record a fatal error of thread ``name`` and stop the worker."""
        with self._lock:
            first = self.failure is None
            if first:
                self.failure, self.failed_thread = exc, name
        if first:
            self._log.critical(
                "worker thread died; stopping the worker",
                thread=name,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
            self._on_crash()

    def check(self) -> None:
        """Raise ``WorkerCrashed`` if a thread died."""
        if self.failure is not None:
            raise WorkerCrashed(
                f"worker thread {self.failed_thread} died:"
                f" {type(self.failure).__name__}: {self.failure}"
            ) from self.failure
