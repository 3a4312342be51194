"""Read-your-writes: wait_for and wait_for_async with results and position tokens, and the
async status, against real projection workers' checkpoints."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection

import projections
from eventsource import NO_STREAM, AsyncEventStore, EventStore, ProjectionTimeout, RecordedEvent
from eventsource.store import PositionTokenError
from projections import Projection, handles
from tests.domain import Deposited, Opened


class Seen(Projection):
    """Counts the Deposited events it applies (in memory: the checkpoint is what is waited on)."""

    name = "test.wait.seen"

    def __init__(self) -> None:
        self.count = 0

    @handles(Deposited)
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        self.count += 1


def test_wait_for_takes_a_result_or_its_token(store: EventStore) -> None:
    """Once a worker has applied an append, wait_for returns for its result and its token."""
    result = store.append("w-1", [Opened(owner="a"), Deposited(amount=1)], NO_STREAM)
    seen = Seen()
    projections.run(store, [seen], stop_when_caught_up=True)
    assert seen.count == 1
    projections.wait_for(store, Seen, result, timeout=1)
    projections.wait_for(store, "test.wait.seen", result.token, timeout=1)


def test_wait_for_times_out_on_a_later_position(store: EventStore) -> None:
    """An append not yet applied (no worker ran since) is a ProjectionTimeout naming it."""
    store.append("w-2", [Deposited(amount=1)], NO_STREAM)
    projections.run(store, [Seen()], stop_when_caught_up=True)
    later = store.append("w-2", [Deposited(amount=2)], 1)
    with pytest.raises(ProjectionTimeout, match=f"position {later.position} of partition"):
        projections.wait_for(store, Seen, later.token, timeout=0.2)


def test_a_token_of_another_schema_is_refused(store: EventStore) -> None:
    """A token made by a store of another schema is a PositionTokenError, nothing waited."""
    result = store.append("w-3", [Deposited(amount=1)], NO_STREAM)
    foreign = result.token.replace(f":{store.schema}:", ":elsewhere:")
    with pytest.raises(PositionTokenError, match="schema 'elsewhere'"):
        projections.wait_for(store, Seen, foreign)
    with pytest.raises(PositionTokenError, match="malformed"):
        projections.wait_for(store, Seen, "not a token")
    with pytest.raises(TypeError, match="position token, got int"):
        projections.wait_for(store, Seen, 42)  # type: ignore[arg-type]


async def test_wait_for_async_and_status_async(store: EventStore, database_url: str) -> None:
    """An async store waits for a token without blocking the loop, and reports the same
    status as the sync one."""
    async_store = AsyncEventStore.from_url(database_url, schema=store.schema)
    try:
        result = await async_store.append("w-4", [Deposited(amount=1)], NO_STREAM)
        assert isinstance(result.token, str)
        with pytest.raises(ProjectionTimeout):
            await projections.wait_for_async(async_store, Seen, result.token, timeout=0.1)
        projections.run(store, [Seen()], stop_when_caught_up=True)
        await projections.wait_for_async(async_store, Seen, result.token, timeout=1)
        await projections.wait_for_async(async_store, Seen, result, timeout=1)
        assert await projections.status_async(async_store) == projections.status(store)
    finally:
        await async_store.close()
