"""Given/when/then for aggregates, without a database.

``given`` rebuilds an aggregate from past events (its version set, nothing pending), ``when``
runs a command method on it, and ``then`` compares the events that step recorded with the
expected ones, as models (the ``event_id`` each event gets is left out)::

    given(Account, "acc-1", [Opened(owner="ann"), Deposited(amount=10)]) \\
        .when(lambda acc: acc.withdraw(5)) \\
        .then([Withdrawn(amount=5)])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from eventsource._aggregate import Aggregate
from eventsource._events import Event

__all__ = ["Scenario", "given"]

A = TypeVar("A", bound=Aggregate)

_NOT_RUN = "call .when(action) before .then(...) or .then_raises(...)"


def describe(event: Event) -> str:
    """``Withdrawn(amount=5)``: the event's class and fields, without its ``event_id``."""
    fields = event.model_dump(exclude={"event_id"})
    return f"{type(event).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


def _same(expected: Event, recorded: Event) -> bool:
    return type(expected) is type(recorded) and expected.model_dump(
        exclude={"event_id"}
    ) == recorded.model_dump(exclude={"event_id"})


def _listing(title: str, events: Sequence[Event]) -> list[str]:
    if not events:
        return [f"  {title}: (no events)"]
    return [f"  {title}:"] + [f"    {i}. {describe(e)}" for i, e in enumerate(events, 1)]


def _check_events(events: Iterable[Event], argument: str) -> list[Event]:
    if isinstance(events, (str, bytes, Event)) or not isinstance(events, Iterable):
        raise TypeError(f"{argument} must be a list of events, got {events!r}")
    checked = list(events)
    for i, event in enumerate(checked):
        if not isinstance(event, Event):
            raise TypeError(f"{argument}[{i}] must be an Event, got {event!r}")
    return checked


class Scenario(Generic[A]):
    """An aggregate rebuilt from past events, a step run on it, and what that step did.

    Made by ``given``; ``aggregate`` is the aggregate itself, for checks of its state.
    """

    def __init__(self, aggregate: A, history: Sequence[Event]) -> None:
        """A scenario on ``aggregate``, rebuilt from ``history``."""
        self.aggregate = aggregate
        self.history = list(history)
        self._ran = False
        self._recorded: list[Event] = []
        self._raised: Exception | None = None

    def when(self, action: Callable[[A], object]) -> Scenario[A]:
        """Run ``action(aggregate)`` and keep the events it records or the error it raises.

        Returns the scenario, for ``.then(...)`` or ``.then_raises(...)``.
        """
        if not callable(action):
            raise TypeError(f"action must be a callable taking the aggregate, got {action!r}")
        before = len(self.aggregate.pending_events)
        self._ran, self._raised = True, None
        try:
            action(self.aggregate)
        except Exception as exc:  # kept for then_raises; then() reports it
            self._raised = exc
        self._recorded = self.aggregate.pending_events[before:]
        return self

    @property
    def recorded(self) -> list[Event]:
        """The events the when-step recorded, oldest first."""
        return list(self._recorded)

    def then(self, expected: Iterable[Event]) -> A:
        """Check that the when-step recorded exactly ``expected``; the aggregate, for more checks.

        ``AssertionError`` lists the expected and the recorded events when they differ (or
        names the error the step raised instead).
        """
        __tracebackhide__ = True  # pytest reports the caller's line, not this one
        wanted = _check_events(expected, "expected")
        if not self._ran:
            raise RuntimeError(_NOT_RUN)
        if self._raised is not None:
            raise AssertionError(
                "\n".join(
                    [
                        f"{self._step()} raised {type(self._raised).__name__}: {self._raised}",
                        *_listing("expected", wanted),
                    ]
                )
            ) from self._raised
        got = self._recorded
        if len(wanted) == len(got) and all(map(_same, wanted, got)):
            return self.aggregate
        first = next(
            (i for i, (w, g) in enumerate(zip(wanted, got, strict=False), 1) if not _same(w, g)),
            min(len(wanted), len(got)) + 1,
        )
        lines = [
            f"{self._step()} recorded other events than expected (first difference: #{first}):",
            *_listing("expected", wanted),
            *_listing("recorded", got),
        ]
        raise AssertionError("\n".join(lines))

    def then_raises(
        self, expected: type[Exception] | tuple[type[Exception], ...], *, match: str | None = None
    ) -> Exception:
        """Check that the when-step raised ``expected`` (its message searched for the regular
        expression ``match``); the exception, for more checks.

        ``AssertionError`` says what happened instead: the events recorded, or another error.
        """
        __tracebackhide__ = True  # pytest reports the caller's line, not this one
        if not (isinstance(expected, type) and issubclass(expected, BaseException)) and not (
            isinstance(expected, tuple)
            and expected
            and all(isinstance(t, type) and issubclass(t, BaseException) for t in expected)
        ):
            raise TypeError(f"expected must be an exception class, got {expected!r}")
        if match is not None and not isinstance(match, str):
            raise TypeError(f"match must be a regular expression string, got {match!r}")
        if not self._ran:
            raise RuntimeError(_NOT_RUN)
        name = _names(expected)
        raised = self._raised
        if raised is None:
            lines = [f"{self._step()} raised no {name}", *_listing("recorded", self._recorded)]
            raise AssertionError("\n".join(lines))
        if not isinstance(raised, expected):
            raise AssertionError(
                f"{self._step()} raised {type(raised).__name__}: {raised}, not {name}"
            ) from raised
        if match is not None and not re.search(match, str(raised)):
            raise AssertionError(
                f"{self._step()} raised {type(raised).__name__}: {raised!s}\n"
                f"  whose message does not match {match!r}"
            ) from raised
        return raised

    def _step(self) -> str:
        return f"the when-step on {type(self.aggregate).__name__}({self.aggregate.id!r})"


def _names(expected: Any) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(t.__name__ for t in types)


def given(aggregate_type: type[A], aggregate_id: str, events: Iterable[Event] = ()) -> Scenario[A]:
    """A scenario on ``aggregate_type(aggregate_id)`` rebuilt from ``events``.

    The events are applied as a repository's load applies them: the aggregate's ``version``
    is their number and none of them is pending. Example::

        acc = given(Account, "acc-1", [Opened(owner="ann")]).when(
            lambda a: a.deposit(10)
        ).then([Deposited(amount=10)])
        assert acc.balance == 10

        given(Account, "acc-1", []).when(lambda a: a.withdraw(5)).then_raises(
            InsufficientFunds, match="balance"
        )
    """
    if not (isinstance(aggregate_type, type) and issubclass(aggregate_type, Aggregate)):
        raise TypeError(f"aggregate_type must be an Aggregate subclass, got {aggregate_type!r}")
    history = _check_events(events, "events")
    aggregate = aggregate_type(aggregate_id)
    aggregate._replay(history)  # as Repository.load does: applied, counted, not pending
    return Scenario(aggregate, history)
