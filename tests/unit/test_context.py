"""Correlation and causation ids carried by context into event metadata (no database)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from eventsource import correlation, current_correlation
from eventsource._context import with_context


def test_no_ids_outside_a_block() -> None:
    """Outside any correlation() block there are no ids and metadata is passed through."""
    assert current_correlation() == (None, None)
    assert with_context(None) is None
    assert with_context({"a": 1}) == {"a": 1}


def test_block_carries_ids_into_metadata_and_resets_after() -> None:
    """Inside correlation() with_context adds both ids; afterwards they are gone."""
    with correlation(correlation_id="corr-1", causation_id="cause-1"):
        assert current_correlation() == ("corr-1", "cause-1")
        assert with_context({"user": "u"}) == {
            "user": "u",
            "correlation_id": "corr-1",
            "causation_id": "cause-1",
        }
    assert current_correlation() == (None, None)
    assert with_context(None) is None


def test_caller_metadata_wins_over_context() -> None:
    """Ids given in the caller's metadata are kept; the context fills only missing ones."""
    with correlation(correlation_id="ctx-corr", causation_id="ctx-cause"):
        assert with_context({"correlation_id": "mine"}) == {
            "correlation_id": "mine",
            "causation_id": "ctx-cause",
        }


def test_with_context_does_not_mutate_the_caller_mapping() -> None:
    """The caller's metadata dict is copied, not changed."""
    given = {"a": 1}
    with correlation(correlation_id="c"):
        result = with_context(given)
    assert given == {"a": 1}
    assert result == {"a": 1, "correlation_id": "c"}


def test_nested_blocks_restore_the_outer_ids() -> None:
    """An inner block overrides what it sets and restores the outer ids on exit."""
    with correlation(correlation_id="outer", causation_id="outer-cause"):
        with correlation(causation_id="inner-cause"):
            assert current_correlation() == ("outer", "inner-cause")
        assert current_correlation() == ("outer", "outer-cause")
    assert current_correlation() == (None, None)


def test_ids_reset_after_an_exception() -> None:
    """An exception leaving the block still resets the ids."""
    with pytest.raises(RuntimeError), correlation(correlation_id="c"):
        raise RuntimeError("boom")
    assert current_correlation() == (None, None)


def test_ids_are_stringified() -> None:
    """Non-str ids (e.g. a UUID or an int) are stored as text."""
    with correlation(correlation_id=42, causation_id=7):  # type: ignore[arg-type]
        assert current_correlation() == ("42", "7")


def test_ids_do_not_leak_across_threads() -> None:
    """A correlation block in one thread is invisible in another."""
    seen: list[tuple[str | None, str | None]] = []
    with correlation(correlation_id="main"):
        thread = threading.Thread(target=lambda: seen.append(current_correlation()))
        thread.start()
        thread.join()
    assert seen == [(None, None)]


async def test_ids_are_isolated_between_tasks() -> None:
    """Concurrent asyncio tasks each see only their own correlation ids."""

    async def work(name: str) -> tuple[str | None, str | None]:
        with correlation(correlation_id=name):
            await asyncio.sleep(0.01)
            return current_correlation()

    results = await asyncio.gather(work("a"), work("b"), work("c"))
    assert results == [("a", None), ("b", None), ("c", None)]
