"""Aggregates: consistency boundaries whose state is rebuilt by applying their events.

State is declared as annotated class attributes with defaults; it changes only in ``apply``;
command methods check rules and ``record`` new events::

    class Account(Aggregate):
        balance: int = 0

        def deposit(self, amount: int) -> None:
            self.record(MoneyDeposited(amount=amount))

        def apply(self, event: Event) -> None:
            match event:
                case MoneyDeposited():
                    self.balance += event.amount

Aggregates are plain classes (``Account("acc-1")`` type-checks as written); pydantic is used
only to validate snapshots of their state.
"""

from __future__ import annotations

import copy
import hashlib
import typing
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, create_model

from eventsource._checks import MAX_STREAM_ID_LENGTH, check_int, check_name
from eventsource._events import Event

__all__ = ["Aggregate"]

_MISSING = object()
_IMMUTABLE = (int, str, float, bool, bytes, type(None), tuple, frozenset)


class Aggregate:
    """Base class of event-sourced aggregates; ``Aggregate(id)`` starts empty at version 0.

    Class options: ``class Order(Aggregate, name="shop.Order", snapshot_version=2)``. The name
    labels snapshots; bump ``snapshot_version`` when the state's meaning changes without its
    fields changing (changes of fields, types or defaults are detected on their own). Override
    ``partition_key`` to place related streams in one partition (e.g. all of a customer's).
    """

    aggregate_type: ClassVar[str] = "Aggregate"
    snapshot_version: ClassVar[int] = 1
    _state_model: ClassVar[type[BaseModel] | None] = None
    _fields_cache: ClassVar[dict[str, Any] | None] = None
    _mutable_cache: ClassVar[list[tuple[str, Any]] | None] = None

    def __init__(self, id: str, /) -> None:
        self._id = check_name(id, "aggregate id", max_length=MAX_STREAM_ID_LENGTH, blank=True)
        self._version = 0
        self._pending: list[Event] = []
        # Each instance gets its own copy of mutable defaults (a list default is not shared).
        for name, default in self._mutable_defaults():
            setattr(self, name, copy.deepcopy(default))

    def __init_subclass__(
        cls, *, name: str | None = None, snapshot_version: int = 1, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.aggregate_type = check_name(
            name if name is not None else cls.__name__, "aggregate type name"
        )
        cls.snapshot_version = check_int(snapshot_version, "snapshot_version", low=1)
        cls._state_model = None

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

    def state(self) -> dict[str, Any]:
        """The declared state fields and their current values."""
        return {name: getattr(self, name) for name in self._fields()}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.state().items())
        return f"{type(self).__name__}({self._id!r}, version={self._version}, {fields})"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, Aggregate)
            and (other._id, other._version, other.state())
            == (self._id, self._version, self.state())
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable

    # -- internals used by repositories ---------------------------------------------------

    def _replay(self, events: Iterable[Event]) -> None:
        for event in events:
            self.apply(event)
            self._version += 1

    def _mark_saved(self, count: int) -> None:
        del self._pending[:count]

    @classmethod
    def _fields(cls) -> dict[str, Any]:
        """Annotated state attributes (not ClassVars, not private) and their types.

        Resolved once per class, on first use (type hints may name classes defined later).
        """
        cached: dict[str, Any] | None = cls.__dict__.get("_fields_cache")
        if cached is None:
            hints = typing.get_type_hints(cls)
            cached = {
                name: hint
                for name, hint in hints.items()
                if not name.startswith("_")
                and typing.get_origin(hint) is not ClassVar
                and hint is not ClassVar
            }
            cls._fields_cache = cached
        return cached

    @classmethod
    def _mutable_defaults(cls) -> list[tuple[str, Any]]:
        cached: list[tuple[str, Any]] | None = cls.__dict__.get("_mutable_cache")
        if cached is None:
            cached = [
                (name, default)
                for name, default in cls._defaults().items()
                if not isinstance(default, _IMMUTABLE)
            ]
            cls._mutable_cache = cached
        return cached

    @classmethod
    def _defaults(cls) -> dict[str, Any]:
        return {
            name: value
            for name in cls._fields()
            if (value := getattr(cls, name, _MISSING)) is not _MISSING
        }

    @classmethod
    def _snapshot_shape(cls) -> str:
        """A fingerprint of the state's shape: snapshots of another shape are ignored."""
        defaults = cls._defaults()
        fields = ";".join(
            f"{name}:{hint!r}:{defaults.get(name, _MISSING)!r}"
            for name, hint in sorted(cls._fields().items())
        )
        digest = hashlib.sha256(fields.encode()).hexdigest()[:16]
        return f"{cls.snapshot_version}:{digest}"

    @classmethod
    def _state_type(cls) -> type[BaseModel]:
        if cls.__dict__.get("_state_model") is None:
            # Snapshots are written whole: every field is required and nothing else is allowed,
            # so a truncated or foreign state fails validation and is ignored.
            field_definitions: dict[str, Any] = {
                name: (hint, ...) for name, hint in cls._fields().items()
            }
            cls._state_model = create_model(
                f"{cls.__name__}State",
                __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
                **field_definitions,
            )
        model = cls.__dict__["_state_model"]
        assert model is not None
        return model  # type: ignore[no-any-return]

    def _snapshot_state(self) -> str:
        return self._state_type()(**self.state()).model_dump_json()

    @classmethod
    def _from_snapshot(cls, aggregate_id: str, version: int, state: str) -> Aggregate:
        """The aggregate at a snapshot; ``ValidationError`` if the state does not fit."""
        validated = cls._state_type().model_validate_json(state)
        aggregate = cls(aggregate_id)
        for name in cls._fields():
            setattr(aggregate, name, getattr(validated, name))
        aggregate._version = version
        return aggregate
