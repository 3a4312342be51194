"""Repositories: load aggregates from their streams (and snapshots), save their events.

repo = Repository(store, Account, snapshot_every=100)
account = repo.load("acc-1")   # AggregateNotFound if it was never saved
account.deposit(10)
repo.save(account)             # ConcurrencyError if another writer got there first
repo.update("acc-1", lambda acc: acc.deposit(10), retries=5)   # load, change, save
"""

# Generated from eventsource/store/_async_repository.py
# by tools/async_to_sync.py: edit that file, then run `python tools/async_to_sync.py`
# (tests/unit/test_generated.py checks that this file is current).

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import ValidationError

from eventsource._aggregate import Aggregate
from eventsource._checks import check_int
from eventsource._errors import AggregateNotFound, ConcurrencyError
from eventsource._logging import get_logger
from eventsource._telemetry import traced
from eventsource.store._types import AppendResult, PendingAppend, check_stream_id

if TYPE_CHECKING:
    from eventsource.store._sync import EventStore, Transaction

__all__ = ["Repository"]

A = TypeVar("A", bound=Aggregate)
log = get_logger("eventsource.repository")

MAX_RETRIES = 100
PAUSE_CAP = 0.1  # seconds: the longest pause between two tries of ``update``


def _pause(tries: int) -> float:
    """A random pause before try ``tries + 1`` of an update: up to 5 ms, doubling, capped."""
    return random.uniform(0, min(PAUSE_CAP, 0.005 * 2**tries))


class Repository(Generic[A]):
    """Loads and saves one aggregate type through the store of its kind (sync or async)."""

    def __init__(
        self,
        store: EventStore,
        aggregate_type: type[A],
        *,
        snapshot_every: int | None = None,
    ) -> None:
        """``snapshot_every``: write a snapshot each time a save crosses a multiple of it."""
        if not (isinstance(aggregate_type, type) and issubclass(aggregate_type, Aggregate)):
            raise TypeError(f"Repository needs an Aggregate subclass, got {aggregate_type!r}")
        if snapshot_every is not None:
            snapshot_every = check_int(snapshot_every, "snapshot_every", low=1)
        self.store = store
        self.aggregate_type = aggregate_type
        self.snapshot_every = snapshot_every
        self._shape = aggregate_type._snapshot_shape()

    # -- loading -------------------------------------------------------------------------

    def load(self, aggregate_id: str) -> A:
        """The aggregate rebuilt from its snapshot and events; ``AggregateNotFound`` if none."""
        check_stream_id(aggregate_id)
        with traced("eventsource.repository.load") as span:
            snapshot = None
            if self.snapshot_every is not None:
                snapshot = self.store.load_snapshot(
                    aggregate_id, self.aggregate_type.aggregate_type
                )
            aggregate = self._from_snapshot(aggregate_id, snapshot)
            from_snapshot = aggregate.version
            records = self.store.read_stream(aggregate_id, after_version=from_snapshot)
            if aggregate.version == 0 and not records:
                raise AggregateNotFound(self.aggregate_type.aggregate_type, aggregate_id)
            aggregate._replay(record.event for record in records)
            if span.is_recording():
                span.set_attributes(
                    {
                        **self._attributes(aggregate),
                        "eventsource.event.count": len(records),
                        "eventsource.snapshot.version": from_snapshot,
                    }
                )
            return aggregate

    def get(self, aggregate_id: str) -> A | None:
        """The aggregate, or None if it was never saved."""
        try:
            return self.load(aggregate_id)
        except AggregateNotFound:
            return None

    def _from_snapshot(self, aggregate_id: str, snapshot: tuple[int, str, str] | None) -> A:
        """The aggregate at its snapshot, or empty when there is none of the current shape."""
        if snapshot is not None:
            version, shape, state = snapshot
            if shape == self._shape:
                try:
                    restored = self.aggregate_type._from_snapshot(aggregate_id, version, state)
                except ValidationError:
                    log.warning("snapshot ignored: does not validate", stream_id=aggregate_id)
                else:
                    return restored  # type: ignore[return-value]
        return self.aggregate_type(aggregate_id)

    # -- saving --------------------------------------------------------------------------

    def save(
        self,
        aggregate: A,
        *,
        tx: Transaction | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AppendResult | PendingAppend | None:
        """Append the aggregate's pending events at its loaded version; None if it has none.

        ``ConcurrencyError`` if its stream moved on since it was loaded. With ``tx`` the
        events are written when that transaction commits.
        """
        if not isinstance(aggregate, self.aggregate_type):
            raise TypeError(
                f"this repository saves {self.aggregate_type.__name__}, got"
                f" {type(aggregate).__name__}"
            )
        count = len(aggregate._pending)
        if not count:
            return None
        with traced("eventsource.repository.save") as span:
            if span.is_recording():
                span.set_attributes(
                    {**self._attributes(aggregate), "eventsource.event.count": count}
                )
            snapshot = self._snapshot_params(aggregate)
            if tx is None and snapshot is None:
                result = self.store.append(
                    aggregate.id,
                    aggregate._pending,
                    aggregate.version - count,
                    metadata=metadata,
                    partition_key=aggregate.partition_key(),
                )
                aggregate._mark_saved(count)
                return result
            if tx is None:
                with self.store.transaction() as own:
                    pending = self._stage(aggregate, own, metadata, snapshot)
                return pending.result if pending is not None else None
            return self._stage(aggregate, tx, metadata, snapshot)

    def _attributes(self, aggregate: A) -> dict[str, Any]:
        """The span attributes naming ``aggregate``."""
        return {
            "eventsource.aggregate.type": self.aggregate_type.aggregate_type,
            "eventsource.aggregate.id": aggregate.id,
            "eventsource.aggregate.version": aggregate.version,
        }

    def update(
        self,
        aggregate_id: str,
        change: Callable[[A], Any],
        *,
        retries: int = 3,
        metadata: Mapping[str, Any] | None = None,
    ) -> AppendResult | None:
        """Load the aggregate, apply ``change`` to it and save it; the save's result (None
        when ``change`` recorded nothing).

        When another writer got there first (``ConcurrencyError``) it starts over from a fresh
        load, up to ``retries`` more times, after a short random pause; the last conflict is
        raised when every try conflicted. ``change`` runs once per try, so it should only
        record events; it may be a coroutine function with an ``Repository``. An
        aggregate never saved is ``AggregateNotFound``.
        """
        retries = check_int(retries, "retries", low=0, high=MAX_RETRIES)
        if not callable(change):
            raise TypeError(f"change must be callable, got {type(change).__name__}: {change!r}")
        tries = 0
        while True:
            aggregate = self.load(aggregate_id)
            change(aggregate)
            try:
                saved = self.save(aggregate, metadata=metadata)
            except ConcurrencyError:
                tries += 1
                if tries > retries:
                    raise
                log.debug("update conflicted; trying again", stream_id=aggregate_id, tries=tries)
                time.sleep(_pause(tries))
                continue
            return saved.result if isinstance(saved, PendingAppend) else saved

    def _snapshot_params(self, aggregate: A) -> dict[str, Any] | None:
        """The snapshot to write with this save, if the save crosses a multiple of N."""
        every = self.snapshot_every
        if every is None:
            return None
        saved_before = aggregate.version - len(aggregate._pending)
        if aggregate.version // every == saved_before // every:
            return None
        return {
            "stream_id": aggregate.id,
            "aggregate_type": self.aggregate_type.aggregate_type,
            "shape": self._shape,
            "version": aggregate.version,
            "state": aggregate._snapshot_state(),
        }

    def _stage(
        self,
        aggregate: A,
        tx: Transaction,
        metadata: Mapping[str, Any] | None,
        snapshot: dict[str, Any] | None,
    ) -> PendingAppend | None:
        """Stage the aggregate's events not yet staged in ``tx`` (and a snapshot when due).

        A transaction counts what it staged of each aggregate: saving one twice in a
        transaction stages only the events added since, and the saved events leave
        ``pending_events`` only once the transaction has committed.
        """
        key = id(aggregate)
        _, already = tx._saved.get(key, (aggregate, 0))
        events = aggregate._pending[already:]
        if not events:
            return None
        pending = self.store.append(
            aggregate.id,
            events,
            aggregate.version - len(aggregate._pending) + already,
            metadata=metadata,
            partition_key=aggregate.partition_key(),
            tx=tx,
        )
        assert isinstance(pending, PendingAppend)
        if snapshot is not None:
            tx._after_flush.append((self.store._queries.save_snapshot, snapshot))
        if key not in tx._saved:
            tx.on_commit(lambda: aggregate._mark_saved(tx._saved[key][1]))
        tx._saved[key] = (aggregate, already + len(events))
        return pending
