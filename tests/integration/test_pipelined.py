"""Pipelined projections: write-only handlers whose statements are sent without waiting."""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import Connection, text

import projections
from eventsource import EventStore, RecordedEvent
from projections import handles
from tests.domain import Deposited, Opened
from tests.projection_domain import InSchema

FAST: dict[str, Any] = {"heartbeat_interval": 0.05, "lease_ttl": 1.0, "retry_delays": (0.01,)}
POISON = 13


class Totals(InSchema):
    """Per-stream sums, one upsert per event; a deposit of POISON violates a CHECK constraint."""

    name = "test.pipelined.totals"
    pipelined = True
    batch_size = 50
    tables: ClassVar[dict[str, str]] = {
        "totals": "stream_id text PRIMARY KEY, total bigint NOT NULL, events integer NOT NULL,"
        f" CHECK (total <> {POISON})"
    }

    @handles(Opened, Deposited)
    def on_event(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        amount = event.amount if isinstance(event, Deposited) else 0
        tx.execute(
            text(
                f"INSERT INTO {self.s}.totals AS t VALUES (:id, :n, 1) ON CONFLICT (stream_id)"
                " DO UPDATE SET total = t.total + :n, events = t.events + 1"
            ),
            {"id": record.stream_id, "n": amount},
        )


def totals(store: EventStore) -> dict[str, tuple[int, int]]:
    with store.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT stream_id, total, events FROM {store.schema}.totals"))
        return {r.stream_id: (r.total, r.events) for r in rows}


def test_a_pipelined_projection_applies_every_event_once(store: EventStore) -> None:
    """Several batches per partition: the totals equal a fresh computation from the log."""
    for i in range(40):
        store.append(f"acc-{i}", [Opened(owner="o"), *(Deposited(amount=k) for k in range(1, 8))])
    projections.run(store, [Totals(store.schema)], stop_when_caught_up=True, **FAST)
    assert totals(store) == {f"acc-{i}": (28, 8) for i in range(40)}


def test_a_statement_failing_in_the_pipeline_stops_only_its_event(store: EventStore) -> None:
    """The error surfaces when the pipeline syncs: the batch rolls back, narrows to the poison
    event, and the partition stops there; other streams are applied in full."""
    store.append("ok", [Opened(owner="o"), Deposited(amount=1)])
    bad = store.append("bad", [Opened(owner="o"), Deposited(amount=POISON), Deposited(amount=2)])
    projections.run(store, [Totals(store.schema)], stop_when_caught_up=True, max_attempts=2, **FAST)
    (stopped,) = [s for s in projections.status(store) if s.error]
    assert stopped.partition == bad.partition
    assert stopped.error_position == bad.position - 1  # the POISON deposit
    assert "CheckViolation" in (stopped.error or "") or "check constraint" in (stopped.error or "")
    applied = totals(store)
    assert applied["bad"] == (0, 1)  # its Opened, then nothing past the poison event
    if store.read_stream("ok")[0].partition != bad.partition:
        assert applied["ok"] == (1, 2)
