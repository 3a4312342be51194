"""The relay and JetStream-sourced projections through NATS outages: a private nats-server
killed and restarted."""

from __future__ import annotations

import time

import projections
from eventsource import NO_STREAM, EventStore
from eventsource.relay import NatsSink, RelayWorker, status_rows
from tests.background import Background
from tests.domain import Deposited, Opened
from tests.integration.test_jetstream_projections import ledger
from tests.integration.test_relay import check_log, fill, relay
from tests.nats_support import PrivateNats, read_stream
from tests.projection_domain import Ledger


def test_relay_waits_out_a_nats_restart_and_loses_nothing(
    store: EventStore, private_nats: PrivateNats
) -> None:
    """NATS killed mid-stream and restarted: the relay retries, then every event is in the
    stream once, in partition order."""
    stream, prefix = "OUTAGE", "outage"
    for i in range(40):
        store.append(f"acc-{i}", [Opened(owner="o")], NO_STREAM)
    sink = NatsSink(private_nats.url, stream=stream, subject_prefix=prefix, connect_timeout=0.5)
    worker = RelayWorker(store, sink, lease_ttl=2.0, heartbeat_interval=0.2, batch_size=50)
    with Background(worker) as running:
        for round_ in range(3):
            for i in range(40):
                store.append(f"acc-{i}", [Deposited(amount=n + 1) for n in range(5)])
            if round_ == 1:
                private_nats.stop()
                for i in range(40):  # appended while NATS is down
                    store.append(f"acc-{i}", [Deposited(amount=1)])
                time.sleep(1.0)
                assert running.alive(), running.errors
                private_nats.start()
        heads = store.heads()
        deadline = time.monotonic() + 30
        while any(r["position"] < heads[r["partition"]] for r in status_rows(store)):
            assert running.alive(), running.errors
            assert time.monotonic() < deadline, status_rows(store)
            time.sleep(0.05)
    assert not running.errors
    check_log(store, read_stream(private_nats.url, stream), prefix)


def test_a_jetstream_sourced_worker_waits_for_nats_instead_of_exiting(
    store: EventStore, database_url: str, schema: str, private_nats: PrivateNats
) -> None:
    """A JetStream-sourced projection worker started while NATS is down keeps retrying; once
    the server is up and the log relayed, its read model equals the PostgreSQL one."""
    stream, prefix = "OUTAGE_RM", "outagerm"
    fill(store, 12, 3)
    read_store = EventStore.from_url(database_url, schema=f"{schema}_rm", partitions=4)
    read_store.upgrade()
    source = projections.JetStreamSource(
        private_nats.url, stream=stream, subject_prefix=prefix, read_timeout=0.5
    )
    worker = projections.ProjectionWorker(
        read_store,
        [Ledger(read_store.schema)],
        source=source,
        lease_ttl=2.0,
        heartbeat_interval=0.2,
    )
    private_nats.stop()
    running = Background(worker)
    try:
        time.sleep(1.5)
        assert running.alive(), running.errors
        private_nats.start()
        relay(store, private_nats.url, stream, prefix)
        projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True)
        deadline = time.monotonic() + 30
        while ledger(read_store) != ledger(store):
            assert running.alive(), running.errors
            assert time.monotonic() < deadline, projections.status(read_store)
            time.sleep(0.05)
    finally:
        running.stop()
        read_store.close()
    assert not running.errors
