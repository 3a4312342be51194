"""Health for schedulers: what ``projections status --check`` and ``commands list --check``
report as problems (each one a line that says what is wrong and where)."""

from __future__ import annotations

from collections.abc import Sequence

import projections
from eventsource.db import fetch
from eventsource.ops._queries import ops_queries
from eventsource.store import EventStore

__all__ = ["command_problems", "projection_problems"]


def projection_problems(
    checkpoints: Sequence[projections.PartitionStatus], max_lag: int | None = None
) -> list[str]:
    """The partitions stopped on an error, and those lagging more than ``max_lag`` events.

    >>> projection_problems(projections.status(store), max_lag=1000)
    ['balances partition 3: stopped on an error at position 17: ValueError: boom']
    """
    problems = []
    for c in checkpoints:
        where = f"{c.projection} partition {c.partition}"
        if c.error is not None:
            lines = c.error.strip().splitlines()
            last = lines[-1] if lines else "(no message)"
            problems.append(f"{where}: stopped on an error at position {c.error_position}: {last}")
        if max_lag is not None and c.lag > max_lag:
            problems.append(f"{where}: lags {c.lag} events (more than {max_lag})")
    return problems


def command_problems(store: EventStore, max_age: float | None = None) -> list[str]:
    """The queues with dead letters, and those whose oldest due pending command has waited
    more than ``max_age`` seconds (commands delayed into the future do not count)."""
    with store._raw() as conn:
        figures = fetch(conn, ops_queries(store.schema).command_figures)
    problems = []
    for queue, status, count, age in figures:
        if status == "dead":
            problems.append(f"queue {queue}: {count} dead command(s)")
        elif age is not None and max_age is not None and float(age) > max_age:
            problems.append(
                f"queue {queue}: the oldest due command has waited {float(age):.1f}s"
                f" (more than {max_age:g}s)"
            )
    return problems
