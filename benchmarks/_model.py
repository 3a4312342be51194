"""The benchmark's own events and aggregate (type names prefixed ``bench.``).

Payloads are small, as BENCHMARKS.md asks: three fields, about 60 bytes of JSON.
"""

from __future__ import annotations

from eventsource import Aggregate, Event

__all__ = ["Counter", "CounterCreated", "CounterIncremented", "created", "incremented"]

NOTE = "increment from the benchmark"


class CounterCreated(Event, name="bench.CounterCreated"):
    name: str
    owner: str
    limit: int


class CounterIncremented(Event, name="bench.CounterIncremented"):
    by: int
    total: int
    note: str


class Counter(Aggregate, name="bench.Counter"):
    name: str = ""
    owner: str = ""
    limit: int = 0
    total: int = 0

    def create(self, name: str, owner: str, limit: int) -> None:
        if self.version:
            raise ValueError(f"counter {self.id} exists already")
        self.record(CounterCreated(name=name, owner=owner, limit=limit))

    def increment(self, by: int = 1) -> None:
        if self.total + by > self.limit:
            raise ValueError(f"counter {self.id} would pass its limit of {self.limit}")
        self.record(CounterIncremented(by=by, total=self.total + by, note=NOTE))

    def apply(self, event: Event) -> None:
        match event:
            case CounterCreated():
                self.name = event.name
                self.owner = event.owner
                self.limit = event.limit
            case CounterIncremented():
                self.total = event.total


def created(i: int) -> CounterCreated:
    """The creation event of the i-th counter (65 bytes of JSON)."""
    return CounterCreated(name=f"counter-{i:08d}", owner="bench-owner", limit=1_000_000)


def incremented(total: int) -> CounterIncremented:
    """An increment to ``total`` (about 55 bytes of JSON)."""
    return CounterIncremented(by=1, total=total, note=NOTE)
