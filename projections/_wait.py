"""Read-your-writes: wait until a projection has applied an append.

    result = repo.save(account)                    # or store.append(...)
    projections.wait_for(store, "balances", result, timeout=5)
    token = result.token                           # travels to another request ...
    await projections.wait_for_async(astore, "balances", token, timeout=5)

The append is given as its result (``AppendResult``, or a committed ``PendingAppend``) or as
its position token; a token of another schema, or a malformed one, is a ``PositionTokenError``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from eventsource import AppendResult, AsyncEventStore, EventStore, PendingAppend, ProjectionTimeout
from eventsource._internal import check_seconds, fetch, fetch_async, parse_token
from projections._projection import Projection, check_projection_name
from projections._queries import projection_queries

__all__ = ["wait_for", "wait_for_async"]

MAX_WAIT = 86400.0  # seconds: the longest wait that can be asked for
FIRST_DELAY, MAX_DELAY = 0.001, 0.05  # seconds between looks at the checkpoint, doubling

Written = AppendResult | PendingAppend | str


class _Wait:
    """One wait: the checkpoint to read, the position to pass, the deadline, the error."""

    def __init__(
        self,
        store: EventStore | AsyncEventStore,
        projection: str | Projection | type[Projection],
        written: Written,
        timeout: float,
    ) -> None:
        """Check the arguments (the token against the store's schema); nothing is read yet."""
        self.name = check_projection_name(
            projection if isinstance(projection, str) else projection.name
        )
        if isinstance(written, str):
            partition, self.position = parse_token(written, store.schema)
        elif isinstance(written, AppendResult | PendingAppend):
            partition, self.position = written.partition, written.position
        else:
            raise TypeError(
                "wait_for takes an append's AppendResult, PendingAppend or position token, got"
                f" {type(written).__name__}: {written!r}"
            )
        self.timeout = check_seconds(timeout, "timeout", high=MAX_WAIT)
        self.key: dict[str, Any] = {"projection": self.name, "partition": partition}
        self.query = projection_queries(store).position
        self.deadline = time.monotonic() + self.timeout
        self.delay = FIRST_DELAY

    def done(self, rows: list[tuple[Any, ...]]) -> bool:
        """Whether the checkpoint read passed the position; ``ProjectionTimeout`` once the
        deadline has passed."""
        if rows and rows[0][0] >= self.position:
            return True
        if time.monotonic() >= self.deadline:
            at = rows[0][0] if rows else "no checkpoint"
            raise ProjectionTimeout(
                f"projection {self.name!r} has not reached position {self.position} of"
                f" partition {self.key['partition']} within {self.timeout}s (it is at {at}):"
                " is a worker running?"
            )
        return False

    def pause(self) -> float:
        """The delay before the next look (doubling up to ``MAX_DELAY``)."""
        delay, self.delay = self.delay, min(self.delay * 2, MAX_DELAY)
        return delay


def wait_for(
    store: EventStore,
    projection: str | Projection | type[Projection],
    written: Written,
    timeout: float = 5.0,
) -> None:
    """Block until ``projection`` has applied the append ``written`` (its result or token).

    ``ProjectionTimeout`` if it has not within ``timeout`` seconds.
    """
    wait = _Wait(store, projection, written, timeout)
    while True:
        with store._raw() as conn:
            rows = fetch(conn, wait.query, wait.key)
        if wait.done(rows):
            return
        time.sleep(wait.pause())


async def wait_for_async(
    store: AsyncEventStore,
    projection: str | Projection | type[Projection],
    written: Written,
    timeout: float = 5.0,  # noqa: ASYNC109 - a deadline of its own, as in wait_for
) -> None:
    """``wait_for`` for an ``AsyncEventStore``: the event loop runs on while it waits."""
    wait = _Wait(store, projection, written, timeout)
    while True:
        async with store._raw() as conn:
            rows = await fetch_async(conn, wait.query, wait.key)
        if wait.done(rows):
            return
        await asyncio.sleep(wait.pause())
