"""Projections shared by the projection tests, importable by worker processes as
``tests.projection_domain:Ledger``.

The ``Ledger`` read model makes a lost or a doubly applied event visible: one row per applied
event (no unique key, so a second application is a second row) and per-stream totals (events
applied and the sum of their amounts), both comparable with a fresh computation from the log.
Its tables live in the schema named by ``TEST_READ_SCHEMA`` (the test's own schema, dropped
after the test) unless one is given to the constructor.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from sqlalchemy import Connection, Engine, text

from eventsource import Event, EventStore, RecordedEvent
from eventsource.db import quote_schema
from projections import Projection, handles
from tests.domain import Deposited, Opened

READ_SCHEMA_ENV = "TEST_READ_SCHEMA"
POISON = 666_666  # a deposit of this amount is rejected by the Ledger's handler


class InSchema(Projection):
    """A test projection whose read model lives in ``schema`` (``self.s``, quoted); ``setup``
    creates each of its ``tables`` (name: column list) if it is not there."""

    tables: ClassVar[dict[str, str]] = {}

    def __init__(self, schema: str) -> None:
        self.s = quote_schema(schema)

    def setup(self, tx: Connection) -> None:
        for table, columns in self.tables.items():
            tx.execute(text(f"CREATE TABLE IF NOT EXISTS {self.s}.{table} ({columns})"))


class StreamsSeen(Projection):
    """Notes the streams of the ``Opened`` events it gets, in memory; a subclass names it."""

    def __init__(self) -> None:
        self.streams: list[str] = []

    def setup(self, tx: Connection) -> None:
        """Nothing to create."""

    @handles(Opened)
    def on_opened(self, event: Opened, record: RecordedEvent, tx: Connection) -> None:
        self.streams.append(record.stream_id)


class PoisonError(Exception):
    """The Ledger rejects this event (a deposit of the POISON amount)."""


class Ledger(Projection):
    """Per-event rows and per-stream totals of Opened (amount 0) and Deposited events."""

    name = "test.ledger"

    def __init__(self, read_schema: str | None = None) -> None:
        self.read_schema = read_schema or os.environ[READ_SCHEMA_ENV]
        self.s = quote_schema(self.read_schema)

    def setup(self, tx: Connection) -> None:
        tx.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {self.s}.ledger_applied (stream_id text NOT NULL,"
                " version integer NOT NULL, partition integer NOT NULL,"
                " position bigint NOT NULL, amount bigint NOT NULL)"
            )
        )
        tx.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {self.s}.ledger_totals (stream_id text PRIMARY KEY,"
                " events integer NOT NULL, total bigint NOT NULL)"
            )
        )

    def reset(self, tx: Connection) -> None:
        tx.execute(text(f"TRUNCATE {self.s}.ledger_applied, {self.s}.ledger_totals"))

    @handles(Opened)
    def on_opened(self, event: Opened, record: RecordedEvent, tx: Connection) -> None:
        self.apply(record, 0, tx)

    @handles(Deposited)
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        if event.amount == POISON:
            raise PoisonError(f"poison deposit in {record.stream_id} v{record.stream_version}")
        self.apply(record, event.amount, tx)

    def apply(self, record: RecordedEvent, amount: int, tx: Connection) -> None:
        params = {
            "stream_id": record.stream_id,
            "version": record.stream_version,
            "partition": record.partition,
            "position": record.position,
            "amount": amount,
        }
        tx.execute(
            text(
                f"INSERT INTO {self.s}.ledger_applied VALUES"
                " (:stream_id, :version, :partition, :position, :amount)"
            ),
            params,
        )
        tx.execute(
            text(
                f"INSERT INTO {self.s}.ledger_totals AS t VALUES (:stream_id, 1, :amount)"
                " ON CONFLICT (stream_id) DO UPDATE"
                " SET events = t.events + 1, total = t.total + EXCLUDED.total"
            ),
            params,
        )


@dataclass(frozen=True)
class LedgerState:
    """A Ledger read model (or what it should be): applied events, counted, and totals."""

    # (stream, version, partition, position, amount) -> times applied
    applied: Counter[tuple[str, int, int, int, int]]
    totals: dict[str, tuple[int, int]]  # stream -> (events, total)

    @property
    def events(self) -> int:
        return sum(self.applied.values())


def ledger_from_log(
    store: EventStore, excluded: frozenset[tuple[int, int]] = frozenset()
) -> LedgerState:
    """What the Ledger must hold, computed afresh from every partition of the log, without
    the events at the (partition, position) pairs in ``excluded`` (skipped poison events)."""
    applied: Counter[tuple[str, int, int, int, int]] = Counter()
    totals: dict[str, tuple[int, int]] = {}
    for partition in range(store.partitions):
        for record in store.iter_partition(partition):
            if (record.partition, record.position) in excluded:
                continue
            event = record.event
            if isinstance(event, Opened):
                amount = 0
            elif isinstance(event, Deposited):
                amount = event.amount
            else:
                continue
            applied[
                (record.stream_id, record.stream_version, record.partition, record.position, amount)
            ] += 1
            events, total = totals.get(record.stream_id, (0, 0))
            totals[record.stream_id] = (events + 1, total + amount)
    return LedgerState(applied, totals)


def ledger_read_model(engine: Engine, read_schema: str) -> LedgerState:
    """The Ledger read model as stored in ``read_schema``."""
    s = quote_schema(read_schema)
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT stream_id, version, partition, position, amount FROM {s}.ledger_applied")
        ).all()
        totals = conn.execute(text(f"SELECT stream_id, events, total FROM {s}.ledger_totals")).all()
    return LedgerState(
        Counter(tuple(row) for row in rows),  # type: ignore[misc]
        {stream_id: (events, total) for stream_id, events, total in totals},
    )


def write_workload(
    store: EventStore, *, seed: int, ops: int, prefix: str, streams: int = 40
) -> int:
    """Append a random mix to ``streams`` streams named ``{prefix}-{k}``: single events,
    batches, and transactions over 2-3 streams (often in different partitions); events
    written."""
    rng = random.Random(seed)
    names = [f"{prefix}-{k}" for k in range(streams)]
    opened: set[str] = set()
    written = 0

    def events_for(stream_id: str, count: int) -> list[Event]:
        events: list[Event] = []
        if stream_id not in opened:
            opened.add(stream_id)
            events.append(Opened(owner=prefix))
        events += [Deposited(amount=rng.randint(1, 1000)) for _ in range(count)]
        return events

    for _ in range(ops):
        kind = rng.random()
        if kind < 0.6:
            stream_id = rng.choice(names)
            events = events_for(stream_id, rng.randint(1, 5))
            store.append(stream_id, events)
            written += len(events)
        else:
            chosen = rng.sample(names, rng.randint(2, 3))
            with store.transaction() as tx:
                for stream_id in chosen:
                    events = events_for(stream_id, rng.randint(1, 4))
                    store.append(stream_id, events, tx=tx)
                    written += len(events)
    return written
