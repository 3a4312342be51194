"""Threads whose death stops the worker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from eventsource._errors import WorkerCrashed

__all__ = ["Supervisor"]


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
