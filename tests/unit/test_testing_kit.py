"""eventsource.testing's given/when/then for aggregates: results and failure messages."""

from __future__ import annotations

from typing import Any

import pytest

from eventsource import Aggregate, Event, testing
from eventsource.testing import given


class KitOpened(Event, name="kit.Opened"):
    owner: str


class KitDeposited(Event, name="kit.Deposited"):
    amount: int


class KitWithdrawn(Event, name="kit.Withdrawn"):
    amount: int


class InsufficientFunds(Exception):
    """The balance does not cover a withdrawal."""


class Wallet(Aggregate, name="kit.Wallet"):
    owner: str = ""
    balance: int = 0

    def deposit(self, amount: int) -> None:
        self.record(KitDeposited(amount=amount))

    def withdraw(self, amount: int) -> None:
        if amount > self.balance:
            raise InsufficientFunds(f"balance {self.balance} does not cover {amount}")
        self.record(KitWithdrawn(amount=amount))

    def apply(self, event: Event) -> None:
        match event:
            case KitOpened():
                self.owner = event.owner
            case KitDeposited():
                self.balance += event.amount
            case KitWithdrawn():
                self.balance -= event.amount


HISTORY = [KitOpened(owner="ann"), KitDeposited(amount=10)]


def test_given_rebuilds_the_aggregate_with_its_version_and_nothing_pending() -> None:
    """given applies the events: state and version set, no pending events."""
    wallet = given(Wallet, "w-1", HISTORY).aggregate
    assert (wallet.id, wallet.version, wallet.balance, wallet.owner) == ("w-1", 2, 10, "ann")
    assert wallet.pending_events == []


def test_then_passes_on_the_recorded_events_and_returns_the_aggregate() -> None:
    """then compares events as models (ids aside) and returns the aggregate."""
    wallet = (
        given(Wallet, "w-1", HISTORY).when(lambda w: w.withdraw(5)).then([KitWithdrawn(amount=5)])
    )
    assert (wallet.balance, wallet.version) == (5, 3)


def test_then_lists_expected_and_recorded_events_when_they_differ() -> None:
    """A mismatch names the first difference and lists both sides."""
    scenario = given(Wallet, "w-1", HISTORY).when(lambda w: w.withdraw(4))
    with pytest.raises(AssertionError) as info:
        scenario.then([KitWithdrawn(amount=5)])
    assert str(info.value) == (
        "the when-step on Wallet('w-1') recorded other events than expected"
        " (first difference: #1):\n"
        "  expected:\n"
        "    1. KitWithdrawn(amount=5)\n"
        "  recorded:\n"
        "    1. KitWithdrawn(amount=4)"
    )


def test_then_reports_missing_and_extra_events() -> None:
    """Fewer recorded events than expected: the difference is at the first missing one."""
    scenario = given(Wallet, "w-1").when(lambda w: None)
    with pytest.raises(AssertionError, match=r"#1\):\n  expected:\n    1\. KitDeposited"):
        scenario.then([KitDeposited(amount=1)])

    def twice(wallet: Wallet) -> None:
        wallet.deposit(1)
        wallet.deposit(2)

    with pytest.raises(AssertionError, match=r"#2\)"):
        given(Wallet, "w-1").when(twice).then([KitDeposited(amount=1)])


def test_then_names_the_error_the_step_raised() -> None:
    """A step that raised instead of recording fails then() with the error's name."""
    scenario = given(Wallet, "w-1").when(lambda w: w.withdraw(5))
    with pytest.raises(AssertionError, match="raised InsufficientFunds: balance 0") as info:
        scenario.then([KitWithdrawn(amount=5)])
    assert isinstance(info.value.__cause__, InsufficientFunds)


def test_then_raises_returns_the_matching_exception() -> None:
    """then_raises passes on the right type and message, and returns the error."""
    error = (
        given(Wallet, "w-1", HISTORY)
        .when(lambda w: w.withdraw(50))
        .then_raises(InsufficientFunds, match=r"does not cover 50")
    )
    assert isinstance(error, InsufficientFunds)


def test_then_raises_lists_the_events_when_nothing_was_raised() -> None:
    """A step that did not raise fails then_raises with what it recorded."""
    scenario = given(Wallet, "w-1", HISTORY).when(lambda w: w.withdraw(5))
    with pytest.raises(AssertionError) as info:
        scenario.then_raises(InsufficientFunds)
    assert str(info.value) == (
        "the when-step on Wallet('w-1') raised no InsufficientFunds\n"
        "  recorded:\n"
        "    1. KitWithdrawn(amount=5)"
    )


def test_then_raises_reports_another_type_or_message() -> None:
    """Another exception type, or a message that does not match, fails then_raises."""
    scenario = given(Wallet, "w-1").when(lambda w: w.withdraw(5))
    with pytest.raises(AssertionError, match=r"raised InsufficientFunds: .*, not KeyError"):
        scenario.then_raises(KeyError)
    with pytest.raises(AssertionError, match="does not match 'overdraft'"):
        scenario.then_raises(InsufficientFunds, match="overdraft")


def test_recorded_holds_only_the_last_steps_events() -> None:
    """Each when-step records its own events; the given history is not among them."""
    scenario = given(Wallet, "w-1", HISTORY).when(lambda w: w.deposit(1))
    scenario.when(lambda w: w.deposit(2))
    assert scenario.recorded == scenario.aggregate.pending_events[1:]
    assert [e.amount for e in scenario.recorded if isinstance(e, KitDeposited)] == [2]


def test_then_before_when_is_an_error() -> None:
    """then without a when-step says what to call first."""
    with pytest.raises(RuntimeError, match=r"call \.when\(action\) before"):
        given(Wallet, "w-1").then([])


def test_bad_arguments_are_named() -> None:
    """Bad input raises TypeError naming the argument and the value."""
    bad: Any = 3
    with pytest.raises(TypeError, match="aggregate_type must be an Aggregate subclass, got 3"):
        given(bad, "w-1")
    with pytest.raises(TypeError, match="events must be a list of events, got 3"):
        given(Wallet, "w-1", bad)
    with pytest.raises(TypeError, match=r"events\[1\] must be an Event, got 3"):
        given(Wallet, "w-1", [KitOpened(owner="a"), bad])
    with pytest.raises(TypeError, match="action must be a callable taking the aggregate, got 3"):
        given(Wallet, "w-1").when(bad)
    scenario = given(Wallet, "w-1").when(lambda w: None)
    with pytest.raises(TypeError, match="expected must be an exception class, got 3"):
        scenario.then_raises(bad)
    with pytest.raises(TypeError, match="match must be a regular expression string, got 3"):
        scenario.then_raises(ValueError, match=bad)
    with pytest.raises(TypeError, match="expected must be a list of events, got 3"):
        scenario.then(bad)


def test_the_kits_public_names_are_pinned() -> None:
    """eventsource.testing exports exactly these names (API.md's and their results)."""
    assert sorted(testing.__all__) == [
        "DrainResult",
        "ProjectionRun",
        "Scenario",
        "drain",
        "drain_async",
        "given",
        "run_projections",
        "run_projections_async",
    ]
    assert all(getattr(testing, name).__doc__ for name in testing.__all__)
