"""Replays started from the operations page: one background thread per replay.

A replay is ``projections.replay`` itself (every lease taken, ``reset``, checkpoints to 0, run
to the head, partitions handed back); the page shows its progress from the checkpoints, as
any other reader of the store would see it. Only projections given to the app (their code is
needed to rebuild them) can be replayed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import projections
from eventsource._logging import get_logger
from eventsource.store import EventStore

__all__ = ["Replay", "Replays"]

log = get_logger("eventsource.ops")


@dataclass
class Replay:
    """One replay started from the page: its state (running, done, failed) and outcome."""

    projection: str
    started_at: float
    state: str = "running"
    applied: int = 0
    error: str | None = None
    finished_at: float | None = None


class Replays:
    """The replayable projections of one app, and the replays it started (the last per name)."""

    def __init__(self, store: EventStore, replayable: list[projections.Projection]) -> None:
        self.store = store
        self.replayable = {p.name: p for p in replayable}
        self.jobs: dict[str, Replay] = {}
        self._lock = threading.Lock()

    def can_replay(self, name: str) -> bool:
        """Whether the app has ``name``'s code (so that it can be rebuilt from here)."""
        return name in self.replayable

    def running(self, name: str) -> bool:
        """Whether a replay of ``name`` started here is running."""
        job = self.jobs.get(name)
        return job is not None and job.state == "running"

    def start(self, name: str) -> Replay:
        """Start replaying ``name`` on a thread (KeyError if not replayable; the running
        replay if one is running already)."""
        projection = self.replayable[name]
        with self._lock:
            job = self.jobs.get(name)
            if job is not None and job.state == "running":
                return job
            job = self.jobs[name] = Replay(name, time.time())
        thread = threading.Thread(
            target=self._run, args=(job, projection), name=f"ops-replay-{name}", daemon=True
        )
        thread.start()
        return job

    def _run(self, job: Replay, projection: projections.Projection) -> None:
        """The replay's thread: run it to the head and record how it ended."""
        try:
            job.applied = projections.replay(self.store, projection, progress=False)
            job.state = "done"
        except Exception as exc:  # shown on the page; the process goes on serving
            job.error = f"{type(exc).__name__}: {exc}"
            job.state = "failed"
            log.warning("replay failed", projection=job.projection, error=job.error)
        finally:
            job.finished_at = time.time()
