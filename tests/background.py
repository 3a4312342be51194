"""A worker's ``run()`` on a thread of the test's process, with what it raised."""

from __future__ import annotations

import threading
from typing import Protocol


class _Worker(Protocol):
    def run(self) -> object: ...

    def stop(self) -> None: ...


class Background:
    """Runs ``worker.run()`` on a thread from construction; ``stop()`` stops and joins it.

    ``errors`` holds what ``run`` raised; ``alive()`` whether the thread still runs. As a
    context manager it stops the worker on the way out.
    """

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.errors.append(exc)

    def alive(self) -> bool:
        """Whether ``run`` is still going."""
        return self.thread.is_alive()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the worker to stop and wait up to ``timeout`` seconds for its thread."""
        self.worker.stop()
        self.thread.join(timeout)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
