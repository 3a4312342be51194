"""A testing kit for applications built on eventsource.

- ``given``: given/when/then for aggregates, without a database;
- ``run_projections`` and ``drain``: run projections, or the pending commands of a queue,
  in-process until there is nothing left to do (for integration tests), and their async
  variants ``run_projections_async`` and ``drain_async``;
- ``eventsource.testing.plugin``: the pytest plugin with the ``event_store`` and
  ``async_event_store`` fixtures (an upgraded store in a fresh schema, dropped afterwards).

Example::

    from eventsource.testing import given

    def test_withdraw() -> None:
        given(Account, "acc-1", [Opened(owner="ann"), Deposited(amount=10)]).when(
            lambda acc: acc.withdraw(5)
        ).then([Withdrawn(amount=5)])
"""

from __future__ import annotations

from eventsource.testing._runners import (
    DrainResult,
    ProjectionRun,
    drain,
    drain_async,
    run_projections,
    run_projections_async,
)
from eventsource.testing._scenario import Scenario, given

__all__ = [
    "DrainResult",
    "ProjectionRun",
    "Scenario",
    "drain",
    "drain_async",
    "given",
    "run_projections",
    "run_projections_async",
]
