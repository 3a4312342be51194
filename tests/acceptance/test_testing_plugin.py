"""An application's own tests, written only against eventsource.testing, run under pytest with
the plugin (its entry point, or ``-p`` where the distribution is not installed)."""

from __future__ import annotations

import os
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

# A user's domain and tests: an account, a read model of balances and a command handler.
USER_TESTS = """
from __future__ import annotations

import pytest
from sqlalchemy import text

from eventsource import Aggregate, Command, CommandQueue, Event, Repository
from eventsource.db import quote_schema
from eventsource.testing import drain, given, run_projections
from projections import Projection, handles


class Opened(Event, name="bank.Opened"):
    owner: str


class Deposited(Event, name="bank.Deposited"):
    amount: int


class Withdrawn(Event, name="bank.Withdrawn"):
    amount: int


class InsufficientFunds(Exception):
    pass


class Account(Aggregate, name="bank.Account"):
    owner: str = ""
    balance: int = 0

    def deposit(self, amount: int) -> None:
        self.record(Deposited(amount=amount))

    def withdraw(self, amount: int) -> None:
        if amount > self.balance:
            raise InsufficientFunds(f"balance {self.balance} is below {amount}")
        self.record(Withdrawn(amount=amount))

    def apply(self, event: Event) -> None:
        match event:
            case Opened():
                self.owner = event.owner
            case Deposited():
                self.balance += event.amount
            case Withdrawn():
                self.balance -= event.amount


class Balances(Projection):
    name = "bank.balances"

    def __init__(self, schema: str) -> None:
        self.table = f"{quote_schema(schema)}.balances"

    def setup(self, tx) -> None:
        tx.execute(text(f"CREATE TABLE IF NOT EXISTS {self.table} (id text PRIMARY KEY, n int)"))

    def reset(self, tx) -> None:
        tx.execute(text(f"TRUNCATE {self.table}"))

    @handles(Deposited)
    def on_deposit(self, event, record, tx) -> None:
        tx.execute(
            text(f"INSERT INTO {self.table} VALUES (:id, :n) ON CONFLICT (id)"
                 f" DO UPDATE SET n = {self.table}.n + :n"),
            {"id": record.stream_id, "n": event.amount},
        )


class PayInterest(Command, name="bank.PayInterest"):
    account_id: str


HISTORY = [Opened(owner="ann"), Deposited(amount=10)]


def test_withdraw_records_the_withdrawal():
    acc = given(Account, "acc-1", HISTORY).when(lambda a: a.withdraw(5)).then(
        [Withdrawn(amount=5)]
    )
    assert acc.balance == 5


def test_overdraft_is_refused():
    given(Account, "acc-1", HISTORY).when(lambda a: a.withdraw(50)).then_raises(
        InsufficientFunds, match="below 50"
    )


def test_balances_follow_deposits(event_store):
    repo = Repository(event_store, Account)
    acc = Account("acc-1")
    acc.record(Opened(owner="ann"))
    acc.deposit(7)
    repo.save(acc)
    run_projections(event_store, [Balances(event_store.schema)])
    with event_store.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id, n FROM {quote_schema(event_store.schema)}.balances"))
        assert rows.all() == [("acc-1", 7)]


def test_interest_is_paid_by_the_handler(event_store):
    queue = CommandQueue(event_store)
    repo = Repository(event_store, Account)
    acc = Account("acc-2")
    acc.deposit(100)
    repo.save(acc)

    def pay(cmd, ctx):
        repo.update(cmd.account_id, lambda a: a.deposit(a.balance // 10))

    queue.enqueue(PayInterest(account_id="acc-2"))
    result = drain(queue, handlers={PayInterest: pay})
    assert (result.succeeded, result.failed, result.died) == (1, 0, 0)
    assert repo.load("acc-2").balance == 110


@pytest.mark.asyncio
async def test_the_async_store_appends(async_event_store):
    result = await async_event_store.append("acc-3", [Opened(owner="bob")])
    assert result.stream_version == 1
    records = await async_event_store.read_stream("acc-3")
    assert [r.event.owner for r in records] == ["bob"]
"""

FAILING_TEST = """
from eventsource.testing import given
from test_bank import HISTORY, Account, Withdrawn


def test_wrong_amount():
    given(Account, "acc-1", HISTORY).when(lambda a: a.withdraw(4)).then([Withdrawn(amount=5)])
"""


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str, ini: str = ""
) -> pytest.RunResult:
    """Run pytest in a fresh process (the user's event classes register once per process)."""
    pytester.makeini(f"[pytest]\nasyncio_default_fixture_loop_scope = function\n{ini}")
    env_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", env_path)
    # The installed distribution registers the plugin (entry point `eventsource`); a source
    # tree on PYTHONPATH alone needs it named.
    installed = any(e.name == "eventsource" for e in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "eventsource.testing.plugin"]
    return pytester.runpytest_subprocess(*plugin, "-p", "no:cacheprovider", *args, timeout=240)


def test_a_users_test_suite_passes_with_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """given/then, run_projections, drain and both store fixtures work in a user's tests."""
    pytester.makepyfile(test_bank=USER_TESTS)
    result = _run(pytester, monkeypatch)
    result.assert_outcomes(passed=5)


def test_a_failing_expectation_shows_expected_and_recorded_events(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report of a wrong expectation lists both sides, readably."""
    pytester.makepyfile(test_bank=USER_TESTS, test_wrong=FAILING_TEST)
    result = _run(pytester, monkeypatch, "test_wrong.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E       AssertionError: the when-step on Account('acc-1') recorded other events"
            " than expected (first difference: #1):",
            "E         expected:",
            "E           1. Withdrawn(amount=5)",
            "E         recorded:",
            "E           1. Withdrawn(amount=4)",
            "test_wrong.py:6: AssertionError",
        ]
    )


def test_the_plugins_fixtures_live_beside_the_projects_own(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conftest with ``store`` and ``schema`` fixtures does not hide the plugin's, whose
    fresh schema (with the partitions the ini asks for) is dropped after the test."""
    pytester.makeconftest(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture
            def schema():
                return "the_projects_schema"

            @pytest.fixture
            def store():
                return "the_projects_store"
            """
        )
    )
    pytester.makepyfile(
        test_names=textwrap.dedent(
            """
            from sqlalchemy import text

            SEEN = []

            def test_fixtures(store, schema, event_store, eventsource_schema):
                assert (store, schema) == ("the_projects_store", "the_projects_schema")
                assert event_store.schema == eventsource_schema != schema
                assert event_store.partitions == 2
                SEEN.append((event_store.url, eventsource_schema))

            def test_the_schema_was_dropped(event_store):
                url, name = SEEN[0]
                with event_store.engine.connect() as conn:
                    found = conn.execute(
                        text("SELECT count(*) FROM pg_namespace WHERE nspname = :n"), {"n": name}
                    ).scalar()
                assert found == 0
            """
        )
    )
    _run(pytester, monkeypatch, ini="eventsource_partitions = 2\n").assert_outcomes(passed=2)


def test_a_bad_partitions_option_is_named(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ini value that is not a partition count fails the fixture with a one-line error."""
    pytester.makepyfile(test_bad="def test_store(event_store):\n    pass\n")
    result = _run(pytester, monkeypatch, ini="eventsource_partitions = many\n")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["E *ValueError: eventsource_partitions must be a number from 1 to 1024, got 'many'"]
    )
