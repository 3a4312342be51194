"""Running a workload: a fresh schema per run, untimed set-up helpers, timing, the median."""

from __future__ import annotations

import gc
import os
import secrets
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from eventsource import NO_STREAM, Event, EventStore
from eventsource._internal import quote_schema

from ._registry import Workload

__all__ = ["Bench", "Result", "Run", "Timer", "fresh_store", "run_workload"]

stderr = Console(stderr=True)


@dataclass
class Run:
    """One timed run: ``count`` units done in ``seconds``, plus workload-specific figures."""

    seconds: float
    count: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """The median of several runs of one workload."""

    workload: str
    n: int
    seconds: float
    per_s: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "n": self.n,
            "seconds": round(self.seconds, 4),
            "per_s": round(self.per_s, 1),
            "unit": self.unit,
            **self.extra,
        }


class Timer:
    seconds: float = 0.0


def progress_bar() -> Progress:
    """A progress bar on stderr (stdout stays clean for ``--json``)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    )


@dataclass
class Bench:
    """What a workload gets: a store on a fresh schema and helpers for untimed set-up."""

    store: EventStore
    run_id: str  # unique per run: prefixes stream ids

    @contextmanager
    def timed(self) -> Iterator[Timer]:
        """Time the block, set up as the CLI's worker processes run.

        Set-up garbage is collected first (it is not charged), and what is left, the objects of
        the imports and the set-up, is frozen out of the collector's reach for the block, as
        the CLI does after start-up.
        """
        timer = Timer()
        gc.collect()
        gc.freeze()
        start = time.perf_counter()
        try:
            yield timer
        finally:
            timer.seconds = time.perf_counter() - start
            gc.unfreeze()

    def stream_id(self, i: int) -> str:
        return f"bench-{self.run_id}-{i}"

    def seed(
        self,
        streams: int,
        events_per_stream: Callable[[int], Sequence[Event]],
        *,
        streams_per_tx: int = 100,
        label: str = "seeding",
    ) -> int:
        """Append to ``streams`` new streams (``stream_id(i)``), many per transaction (untimed).

        Returns the number of events written.
        """
        written = 0
        with progress_bar() as bar:
            task = bar.add_task(label, total=streams)
            for start in range(0, streams, streams_per_tx):
                stop = min(start + streams_per_tx, streams)
                with self.store.transaction() as tx:
                    for i in range(start, stop):
                        events = events_per_stream(i)
                        self.store.append(self.stream_id(i), events, NO_STREAM, tx=tx)
                        written += len(events)
                bar.advance(task, stop - start)
        return written

    def vacuum(self) -> None:
        """VACUUM ANALYZE the events table, as an old log would be (hint bits set, stats)."""
        engine = self.store.engine.execution_options(isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"VACUUM (ANALYZE) {quote_schema(self.store.schema)}.events"))


@contextmanager
def fresh_store(url: URL, *, partitions: int, pool_size: int) -> Iterator[EventStore]:
    """A store on a new schema ``bench_<hex>``, upgraded; the schema is dropped afterwards."""
    schema = f"bench_{secrets.token_hex(6)}"
    store = EventStore.from_url(url, schema=schema, partitions=partitions, pool_size=pool_size)
    failed = True
    try:
        store.upgrade()
        yield store
        failed = False
    finally:
        try:
            with store.engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE"))
        except SQLAlchemyError:
            if not failed:  # else the first error is the one worth reporting
                raise
        finally:
            store.close()


def run_workload(
    url: URL, workload: Workload, *, n: int, repeat: int, partitions: int = 16
) -> Result:
    """Run ``workload`` ``repeat`` times, each in a fresh schema; the median run's figures."""
    runs: list[Run] = []
    for _ in range(repeat):
        with fresh_store(url, partitions=partitions, pool_size=workload.pool_size) as store:
            runs.append(workload.fn(Bench(store, secrets.token_hex(4)), n))
    return summarize(workload.name, n, workload.unit, runs)


def summarize(name: str, n: int, unit: str, runs: Sequence[Run]) -> Result:
    """The median seconds and rate of the runs, their min/max rates and the median extras."""
    rates = [run.count / run.seconds for run in runs]
    seconds = statistics.median(run.seconds for run in runs)
    extra: dict[str, Any] = {}
    for key, value in runs[0].extra.items():
        values = [run.extra.get(key) for run in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) == len(values):
            middle = statistics.median(numbers)
            integral = all(isinstance(v, int) for v in numbers) and middle == int(middle)
            extra[key] = int(middle) if integral else round(middle, 4)
        else:
            extra[key] = value
    extra.update(
        {
            "repeat": len(runs),
            "per_s_min": round(min(rates), 1),
            "per_s_max": round(max(rates), 1),
            "runs_per_s": [round(r, 1) for r in rates],
            # The machine's 1-minute load when the runs ended: other work skews the figures.
            "load1": round(os.getloadavg()[0], 2),
        }
    )
    return Result(name, n, seconds, statistics.median(rates), unit, extra)
