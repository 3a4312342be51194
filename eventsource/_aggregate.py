"""Aggregates: consistency boundaries whose state is rebuilt by applying their events.

State changes only in ``apply``; command methods check rules and ``record`` new events::

    class Account(Aggregate):
        balance: int = 0

        def deposit(self, amount: int) -> None:
            self.record(MoneyDeposited(amount=amount))

        def apply(self, event: Event) -> None:
            match event:
                case MoneyDeposited():
                    self.balance += event.amount
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr

from ._events import Event

__all__ = ["Aggregate"]


class Aggregate(BaseModel):
    """Base class of event-sourced aggregates; ``Aggregate(id)`` starts empty at version 0.

    Class options: ``class Order(Aggregate, name="shop.Order", snapshot_version=2)``. The name
    labels snapshots; bump ``snapshot_version`` when the state's meaning changes without its
    fields changing (field changes are detected on their own). Override ``partition_key`` to
    place related streams in one partition (e.g. all orders of a customer).
    """

    model_config = ConfigDict(validate_assignment=False, arbitrary_types_allowed=True)

    aggregate_type: ClassVar[str] = "Aggregate"
    snapshot_version: ClassVar[int] = 1

    _id: str = PrivateAttr(default="")
    _version: int = PrivateAttr(default=0)
    _pending: list[Event] = PrivateAttr(default_factory=list)

    def __init__(self, id: str, /, **state: Any) -> None:
        super().__init__(**state)
        self._id = id

    def __init_subclass__(
        cls, *, name: str | None = None, snapshot_version: int = 1, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.aggregate_type = name if name is not None else cls.__name__
        cls.snapshot_version = snapshot_version

    @property
    def id(self) -> str:
        """The aggregate's id, which is also its stream id."""
        return self._id

    @property
    def version(self) -> int:
        """How many events have been applied, saved or not."""
        return self._version

    @property
    def pending_events(self) -> list[Event]:
        """Recorded events not yet saved, oldest first."""
        return list(self._pending)

    def record(self, event: Event) -> None:
        """Apply ``event`` and queue it for saving."""
        if not isinstance(event, Event):
            raise TypeError(f"record() takes an Event, got {type(event).__name__}")
        self.apply(event)
        self._version += 1
        self._pending.append(event)

    def apply(self, event: Event) -> None:
        """Change state for one event; subclasses define it, the only place state changes."""
        raise TypeError(f"{type(self).__name__} must define apply(self, event)")

    def partition_key(self) -> str:
        """The key that chooses this aggregate's partition; the id unless overridden."""
        return self._id

    def _replay(self, events: Iterable[Event]) -> None:
        for event in events:
            self.apply(event)
            self._version += 1

    def _mark_saved(self, count: int) -> None:
        del self._pending[:count]

    @classmethod
    def _snapshot_shape(cls) -> str:
        """A fingerprint of the state's shape: snapshots of another shape are ignored."""
        fields = ";".join(
            f"{name}:{field.annotation!r}:{field.default!r}"
            for name, field in sorted(cls.model_fields.items())
        )
        digest = hashlib.sha256(fields.encode()).hexdigest()[:16]
        return f"{cls.snapshot_version}:{digest}"

    def _snapshot_state(self) -> str:
        return self.model_dump_json()

    @classmethod
    def _from_snapshot(cls, aggregate_id: str, version: int, state: str) -> Aggregate:
        aggregate = cls(aggregate_id, **json.loads(state))
        aggregate._version = version
        return aggregate
