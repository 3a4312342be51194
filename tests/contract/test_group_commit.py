"""Group commit, for both twins: standalone appends made at once (threads of the sync store,
tasks of the async one) share statements and commits, yet each gets its own result or its own
error, nothing is lost or written twice, and the log stays dense and in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from eventsource import (
    ANY,
    NO_STREAM,
    AppendResult,
    ConcurrencyError,
    EventStore,
    ExpectedVersion,
)
from tests.domain import Counter, Deposited, Opened
from tests.integration._support import assert_dense, sql

from ._twins import concurrently

Call = tuple[tuple[Any, ...], dict[str, Any]]


def _commits(store: Any) -> int:
    """How many transactions wrote the log's events (the events of one share its xmin)."""
    return int(sql(store, "SELECT count(DISTINCT xmin::text) FROM {s}.events")[0][0])


def _mixed_calls(store: Any) -> tuple[list[Call], dict[int, str]]:
    """40 appends to make at once: new streams, streams that exist (a conflict with
    NO_STREAM, a right and a wrong expected version), and retries of stored appends (their
    event ids again: duplicates). Also what each should give: "ok", "conflict", "duplicate"."""
    stored = {}
    for k in range(6):
        events = [Opened(owner=f"o{k}")]
        store.append(f"old-{k}", events, NO_STREAM)
        stored[k] = events
    calls: list[Call] = []
    expect: dict[int, str] = {}
    for i in range(40):
        kind = i % 8
        if kind == 1:  # a stream that exists, appended to as a new one
            calls.append(((f"old-{i % 6}", [Deposited(amount=i)], NO_STREAM), {}))
            expect[i] = "conflict"
        elif kind == 3 and i < 24:  # the right version of a stream that exists: once each
            calls.append(((f"old-{i // 8 + 3}", [Deposited(amount=i)], 1), {}))
            expect[i] = "ok"
        elif kind == 5:  # a wrong version
            calls.append(((f"old-{i % 6}", [Deposited(amount=i)], 7), {}))
            expect[i] = "conflict"
        elif kind == 7 and i < 24:  # a retry of a stored append
            k = i // 8
            calls.append(((f"old-{k}", stored[k], ANY), {}))
            expect[i] = "duplicate"
        else:
            calls.append(
                ((f"new-{i}", [Opened(owner=f"n{i}"), Deposited(amount=i)], NO_STREAM), {})
            )
            expect[i] = "ok"
    return calls, expect


def test_appends_at_once_each_get_their_own_outcome(store: Any) -> None:
    """Conflicts and retries mixed among appends made at once fail (or repeat) alone: every
    other append is written, exactly once, with its own result, and the log stays dense."""
    calls, expect = _mixed_calls(store)
    before = _commits(store)
    outcomes = concurrently(store, "append", calls)

    written = 0
    for i, outcome in enumerate(outcomes):
        stream_id = calls[i][0][0]
        if expect[i] == "conflict":
            assert isinstance(outcome, ConcurrencyError), (i, outcome)
            assert outcome.stream_id == stream_id
        else:
            assert isinstance(outcome, AppendResult), (i, outcome)
            assert outcome.stream_id == stream_id
            assert outcome.duplicate == (expect[i] == "duplicate")
            if not outcome.duplicate:
                written += len(calls[i][0][1])
    total = assert_dense(store)
    assert total == 6 + written
    # Every result names the place of its last event, and the events are the ones appended.
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, AppendResult):
            events = calls[i][0][1]
            records = store.read_stream(outcome.stream_id)
            last = records[outcome.stream_version - 1]
            assert (last.partition, last.position) == (outcome.partition, outcome.position)
            assert last.event_id == events[-1].event_id
    assert _commits(store) - before <= written  # no append wrote in two transactions


def test_appends_at_once_share_commits(store: Any) -> None:
    """Many appends made at once are written by fewer transactions than appends."""
    calls = [((f"s-{i}", [Opened(owner=f"o{i}")], NO_STREAM), {}) for i in range(48)]
    outcomes = concurrently(store, "append", calls)
    assert all(isinstance(o, AppendResult) and not o.duplicate for o in outcomes), outcomes
    assert assert_dense(store) == 48
    assert _commits(store) < 48
    # Within a partition, positions follow the order in which the appends committed.
    results = sorted(outcomes, key=lambda r: (r.partition, r.position))
    for partition in {r.partition for r in results}:
        mine = [r.position for r in results if r.partition == partition]
        assert mine == list(range(1, len(mine) + 1))


def test_appends_to_one_stream_at_once_keep_each_version(store: Any) -> None:
    """Appends at once to one stream (ANY) are each written once, with versions 1..n."""
    calls = [(("one", [Deposited(amount=i)], ANY), {}) for i in range(12)]
    outcomes = concurrently(store, "append", calls)
    assert sorted(o.stream_version for o in outcomes) == list(range(1, 13))
    amounts = [r.event.amount for r in store.read_stream("one")]
    assert sorted(amounts) == list(range(12))
    assert assert_dense(store) == 12


def test_appends_at_once_to_one_new_stream_let_one_win(store: Any) -> None:
    """Of several appends at once that each expect a new stream, exactly one is written."""
    calls = [(("race", [Opened(owner=f"o{i}")], NO_STREAM), {}) for i in range(10)]
    outcomes = concurrently(store, "append", calls)
    won = [o for o in outcomes if isinstance(o, AppendResult)]
    lost = [o for o in outcomes if isinstance(o, ConcurrencyError)]
    assert len(won) == 1 and len(lost) == 9, outcomes
    assert {e.expected for e in lost} == {ExpectedVersion.NO_STREAM}
    assert assert_dense(store) == 1


@pytest.mark.parametrize("group_commit", [True, False])
def test_group_commit_can_be_turned_off(
    fresh_store: Callable[..., Any], group_commit: bool
) -> None:
    """With group commit off every append commits alone; the outcomes are the same."""
    made = fresh_store(partitions=4, group_commit=group_commit)
    made.upgrade()
    assert made.group_commit is group_commit
    calls, expect = _mixed_calls(made)
    outcomes = concurrently(made, "append", calls)
    kinds = [
        "conflict"
        if isinstance(o, ConcurrencyError)
        else ("duplicate" if isinstance(o, AppendResult) and o.duplicate else "ok")
        for o in outcomes
    ]
    assert kinds == [expect[i] for i in range(len(calls))]
    assert_dense(made)


def test_repository_saves_at_once_are_each_their_own(
    store: Any, repository: Callable[..., Any]
) -> None:
    """Saves of new aggregates made at once each store their aggregate at version 1."""
    repo = repository(Counter)
    accounts = []
    for i in range(16):
        account = Counter(f"acc-{i}")
        account.open(f"owner-{i}")
        accounts.append(account)
    outcomes = concurrently(repo, "save", [((a,), {}) for a in accounts])
    assert all(isinstance(o, AppendResult) and o.stream_version == 1 for o in outcomes)
    assert [a.version for a in accounts] == [1] * 16
    assert assert_dense(store) == 16


def test_sync_store_option_is_checked(database_url: str, schema: str) -> None:
    """group_commit must be a bool, named in the error."""
    with pytest.raises(TypeError, match="group_commit"):
        EventStore.from_url(database_url, schema=schema, group_commit="yes")  # type: ignore[arg-type]
