"""Projections: read models built from the event log's partitions, from stored offsets.

from projections import Projection, handles

class Balances(Projection):
    name = "balances"

    @handles(MoneyDeposited)
    def on_deposit(self, event, record, tx) -> None: ...

projections.run(store, [Balances()], stop_when_caught_up=True)   # in code
async with projections.running(astore, [Balances()]): ...        # in an event loop
# or as processes: eventsource projections run mymodule:Balances
"""

from __future__ import annotations

from eventsource import ProjectionTimeout, ReplayError
from projections._jetstream import JetStreamSource
from projections._ops import (
    PartitionStatus,
    replay,
    retry,
    skip,
    status,
    status_async,
)
from projections._projection import Projection, handles
from projections._reactor import Reactor
from projections._running import running
from projections._sources import Source, StoreSource
from projections._wait import wait_for, wait_for_async
from projections._worker import ProjectionWorker, run

__all__ = [
    "JetStreamSource",
    "PartitionStatus",
    "Projection",
    "ProjectionTimeout",
    "ProjectionWorker",
    "Reactor",
    "ReplayError",
    "Source",
    "StoreSource",
    "handles",
    "replay",
    "retry",
    "run",
    "running",
    "skip",
    "status",
    "status_async",
    "wait_for",
    "wait_for_async",
]
