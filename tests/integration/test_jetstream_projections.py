"""Projections from NATS JetStream: a read model in another store, built from the relayed log,
equals the one built from PostgreSQL; redelivery is applied once; bad messages stop a
partition and show in status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import projections
from eventsource import NO_STREAM, EventStore, partition_for
from eventsource.relay import SinkMisconfigured
from tests.domain import Deposited, Opened
from tests.integration._support import sql
from tests.integration.test_relay import fill, relay
from tests.nats_support import jetstream, read_stream
from tests.projection_domain import Ledger

LEDGER = "SELECT stream_id, version, partition, position, amount FROM {s}.ledger_applied"


@pytest.fixture
def read_store(database_url: str, schema: str) -> Iterator[EventStore]:
    """A second store (the read model's), with as many partitions as ``store``."""
    s = EventStore.from_url(database_url, schema=f"{schema}_rm", partitions=4)
    s.upgrade()
    yield s
    s.close()


def run_from_jetstream(read_store: EventStore, url: str, stream: str, prefix: str) -> None:
    """Run the Ledger from JetStream into ``read_store`` until caught up."""
    source = projections.JetStreamSource(url, stream=stream, subject_prefix=prefix)
    projections.run(
        read_store,
        [Ledger(read_store.schema)],
        stop_when_caught_up=True,
        source=source,
        lease_ttl=2.0,
        heartbeat_interval=0.2,
        retry_delays=(0.05, 0.05),
    )


def ledger(store: EventStore) -> list[Any]:
    """The Ledger's rows in ``store``'s schema, sorted."""
    return sorted(tuple(r) for r in sql(store, LEDGER))


def test_jetstream_read_model_equals_the_postgres_one(
    store: EventStore, read_store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """The Ledger built from JetStream in another store equals the one built from PostgreSQL,
    each event applied once; a second run after more appends applies only those."""
    stream, prefix = target
    fill(store, 30, 6)
    relay(store, nats_url, stream, prefix)
    run_from_jetstream(read_store, nats_url, stream, prefix)
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True)
    assert ledger(read_store) == ledger(store)
    assert len(ledger(read_store)) == 30 * 7

    for i in range(30):
        store.append(f"acc-{i}", [Deposited(amount=7)])
    relay(store, nats_url, stream, prefix)
    run_from_jetstream(read_store, nats_url, stream, prefix)
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True)
    assert ledger(read_store) == ledger(store)
    assert len(ledger(read_store)) == 30 * 8
    positions = {r.partition: r.position for r in projections.status(read_store)}
    assert positions == store.heads()


def test_a_checkpoint_set_back_is_found_again_in_the_stream(
    store: EventStore, read_store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """A worker resumes from its checkpoint's position anywhere in the stream (binary search
    of the sequence), and applies what follows once."""
    stream, prefix = target
    fill(store, 20, 4)
    relay(store, nats_url, stream, prefix)
    run_from_jetstream(read_store, nats_url, stream, prefix)
    expected = ledger(read_store)
    sql(read_store, "DELETE FROM {s}.ledger_applied WHERE position > 3")
    sql(read_store, "UPDATE {s}.projection_checkpoints SET position = 3")
    run_from_jetstream(read_store, nats_url, stream, prefix)
    assert ledger(read_store) == expected


def test_replay_from_jetstream_rebuilds_the_read_model(
    store: EventStore, read_store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """``replay`` with a JetStream source resets the read model and rebuilds it once."""
    stream, prefix = target
    fill(store, 20, 4)
    relay(store, nats_url, stream, prefix)
    run_from_jetstream(read_store, nats_url, stream, prefix)
    expected = ledger(read_store)
    source = projections.JetStreamSource(nats_url, stream=stream, subject_prefix=prefix)
    try:
        applied = projections.replay(
            read_store, Ledger(read_store.schema), progress=False, source=source
        )
    finally:
        source.close()
    assert applied == len(expected) == 100
    assert ledger(read_store) == expected


def test_a_message_without_the_relay_headers_stops_its_partition(
    store: EventStore, read_store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """A foreign message on a relayed subject is a poison message of its partition, shown in
    status; the other partitions go on."""
    stream, prefix = target
    store.append("a", [Opened(owner="a")], NO_STREAM)
    relay(store, nats_url, stream, prefix)
    (partition,) = [p for p, head in store.heads().items() if head]

    async def intrude(js: Any) -> None:
        await js.publish(f"{prefix}.{partition}", b"{}", headers={"X": "1"})

    jetstream(nats_url, intrude)
    other = next(f"b{i}" for i in range(100) if _partition(store, f"b{i}") != partition)
    store.append(other, [Opened(owner="b")], NO_STREAM)
    relay(store, nats_url, stream, prefix)
    run_from_jetstream(read_store, nats_url, stream, prefix)
    rows = {r.partition: r for r in projections.status(read_store)}
    assert rows[partition].error is not None
    assert "lacks the relay headers" in rows[partition].error
    assert rows[partition].position == 1
    assert rows[_partition(store, other)].position == 1
    assert len(ledger(read_store)) == 2


def test_a_store_with_fewer_partitions_than_the_stream_is_refused(
    store: EventStore, database_url: str, schema: str, nats_url: str, target: tuple[str, str]
) -> None:
    """A read model's store must have the relayed store's partitions: else a clear error."""
    stream, prefix = target
    fill(store, 20, 1)
    relay(store, nats_url, stream, prefix)
    small = EventStore.from_url(database_url, schema=f"{schema}_small", partitions=2)
    small.upgrade()
    try:
        with pytest.raises(SinkMisconfigured, match="partitions"):
            run_from_jetstream(small, nats_url, stream, prefix)
    finally:
        small.close()


def _partition(store: EventStore, stream_id: str) -> int:
    """The partition of ``stream_id`` in ``store``."""
    return partition_for(stream_id, store.partitions)


def test_a_message_with_a_malformed_relay_header_stops_its_partition(
    store: EventStore, read_store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """A message whose relay headers are all there but one is malformed is a poison message
    of its partition, named in status, not skipped: what follows it waits."""
    stream, prefix = target
    store.append("a", [Opened(owner="a")], NO_STREAM)
    relay(store, nats_url, stream, prefix)
    (partition,) = [p for p, head in store.heads().items() if head]
    (relayed,) = read_stream(nats_url, stream)
    headers = {**relayed.headers, "Nats-Msg-Id": "other", "Es-Position": "2"}
    headers["Es-Recorded-At"] = "yesterday"

    async def intrude(js: Any) -> None:
        await js.publish(f"{prefix}.{partition}", relayed.data, headers=headers)

    jetstream(nats_url, intrude)
    run_from_jetstream(read_store, nats_url, stream, prefix)
    rows = {r.partition: r for r in projections.status(read_store)}
    assert rows[partition].error is not None
    assert "Es-Recorded-At" in rows[partition].error
    assert rows[partition].position == 1
    assert len(ledger(read_store)) == 1
