"""The Projection base class and the ``@handles`` decorator.

    class Balances(Projection):
        name = "balances"

        def setup(self, tx) -> None:
            tx.execute(text("CREATE TABLE IF NOT EXISTS balances (...)"))

        def reset(self, tx) -> None:
            tx.execute(text("TRUNCATE balances"))

        @handles(MoneyDeposited)
        def on_deposit(self, event: MoneyDeposited, record: RecordedEvent, tx) -> None:
            tx.execute(text("UPDATE balances SET ..."), {...})

Handlers run inside the batch's transaction, the same one that moves the checkpoint: a read
model in this database sees every event exactly once. Side effects elsewhere (an API, a cache,
another database) see them at least once: a batch that fails after such a call is retried.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from sqlalchemy import Connection

from eventsource import Event, RecordedEvent
from eventsource._internal import (
    MAX_NAME_LENGTH,
    Registry,
    check_bool,
    check_int,
    check_name,
    close_thread_loop,
    handler_failed,
    run_on_thread_loop,
)

__all__ = ["Projection", "check_projection_name", "close_thread_loop", "handles"]

F = TypeVar("F", bound=Callable[..., Any])

MAX_BATCH_SIZE = 100_000  # events per transaction; more only makes each one slower to retry

_registry: Registry[type[Projection]] = Registry("projection name", "choose another `name`")


def handles(*event_types: type[Event] | str) -> Callable[[F], F]:
    """Mark a method as the handler of these event classes (or stored type names)."""
    if not event_types:
        raise TypeError("@handles needs at least one event class or type name")
    names = []
    for event_type in event_types:
        if isinstance(event_type, str):
            names.append(check_name(event_type, "event type name"))
        elif isinstance(event_type, type) and issubclass(event_type, Event):
            names.append(event_type.event_type)
        else:
            raise TypeError(f"@handles takes Event classes or type names, got {event_type!r}")

    def mark(fn: F) -> F:
        """Add the type names to those ``fn`` already handles."""
        fn.__handles__ = (*getattr(fn, "__handles__", ()), *names)  # type: ignore[attr-defined]
        return fn

    return mark


class Projection:
    """A read model built from the event log: a name, handlers, ``setup`` and ``reset``.

    Class attributes: ``name`` (required, unique), ``batch_size`` (events per transaction),
    ``pipelined`` (default True): the handlers' plain ``text()`` writes (``INSERT``,
    ``UPDATE``, ``DELETE`` without ``RETURNING``) are queued and sent together in a psycopg
    pipeline, before any other statement, any use of ``tx.connection`` and the batch's end,
    so a handler that reads still sees every write before it; such a write's ``execute``
    returns a ``WriteResult`` (its ``rowcount``, no rows). A failing write fails the batch,
    which is then applied event by event without queueing, to find the poison event. A
    projection doing one statement per event catches up several times faster.
    ``pipelined = False``: every statement is sent and waited for when it is executed.
    """

    name: ClassVar[str] = ""
    batch_size: ClassVar[int] = 500
    pipelined: ClassVar[bool] = True
    _handlers: ClassVar[dict[str, list[str]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Collect the subclass's ``@handles`` methods, check its options, register its name."""
        super().__init_subclass__(**kwargs)
        handlers: dict[str, list[str]] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for type_name in getattr(value, "__handles__", ()):
                    methods = handlers.setdefault(type_name, [])
                    if attr not in methods:
                        methods.append(attr)
        cls._handlers = handlers
        if "batch_size" in cls.__dict__:
            check_int(cls.batch_size, f"{cls.__qualname__}.batch_size", low=1, high=MAX_BATCH_SIZE)
        if "pipelined" in cls.__dict__:
            check_bool(cls.pipelined, f"{cls.__qualname__}.pipelined")
        name = cls.__dict__.get("name")
        if name is None:
            return  # an intermediate base class
        _registry.add(cls, name)  # checked as a name there

    def setup(self, tx: Connection) -> None:
        """Create the read model's tables (idempotent); called when a worker starts."""

    def reset(self, tx: Connection) -> None:
        """Empty the read model before a replay; the checkpoints go to 0 in the same transaction."""

    @classmethod
    def handled_types(cls) -> frozenset[str]:
        """The stored event type names this projection has handlers for."""
        return frozenset(cls._handlers)

    def handle_batch(self, records: Sequence[RecordedEvent], tx: Connection) -> None:
        """Apply one batch (a partition's events in position order) inside its transaction.

        The default calls the ``@handles`` methods of each record's type and skips the rest
        without decoding them. Override it to write a whole batch at once; ``record.event``
        then decodes (``UnknownEventType`` for a type whose class is not loaded).
        """
        handlers = self._handlers
        for record in records:
            for method in handlers.get(record.event_type, ()):
                try:
                    result = getattr(self, method)(record.event, record, tx)
                    if inspect.isawaitable(result):
                        run_on_thread_loop(result)
                except Exception as exc:
                    handler_failed(self.name, method, record, exc)
                    raise


def check_projection_name(name: object) -> str:
    """A projection's name: UTF-8 text of 1 to 200 characters, without NUL (``check_name``)."""
    return check_name(name, "projection name", max_length=MAX_NAME_LENGTH)


def check_unique(projections: Sequence[Projection]) -> None:
    """Two projections with one name in one run are an error."""
    seen: dict[str, Projection] = {}
    for projection in projections:
        if not isinstance(projection, Projection):
            raise TypeError(f"expected Projection instances, got {projection!r}")
        name = check_projection_name(projection.name)
        if name in seen:
            raise ValueError(f"two projections are named {name!r}: names must be unique")
        seen[name] = projection
