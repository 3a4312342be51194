"""Events and aggregates shared by the tests (importable by worker processes too)."""

from __future__ import annotations

from eventsource import Aggregate, Event


class Opened(Event, name="test.Opened"):
    owner: str


class Deposited(Event, name="test.Deposited"):
    amount: int


class Counter(Aggregate, name="test.Counter"):
    owner: str = ""
    total: int = 0

    def open(self, owner: str) -> None:
        self.record(Opened(owner=owner))

    def add(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.record(Deposited(amount=amount))

    def apply(self, event: Event) -> None:
        match event:
            case Opened():
                self.owner = event.owner
            case Deposited():
                self.total += event.amount
