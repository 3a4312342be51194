"""Worker ids, their share of the partitions, and reconnection backoff."""

from __future__ import annotations

import os
import random
import socket
import uuid

__all__ = ["Backoff", "default_worker_id", "round_robin_share"]


def round_robin_share(live: list[str], worker_id: str, partitions: int) -> frozenset[int]:
    """The partitions ``worker_id`` takes among the ``live`` workers (sorted ids; it counts
    itself in if missing): every partition ``p`` with ``p % len(live)`` its place."""
    if worker_id not in live:
        live = sorted([*live, worker_id])
    mine = live.index(worker_id)
    return frozenset(p for p in range(partitions) if p % len(live) == mine)


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
