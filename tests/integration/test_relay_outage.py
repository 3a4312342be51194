"""The relay through NATS outages: a private nats-server killed and restarted mid-stream."""

from __future__ import annotations

import threading
import time

from eventsource import NO_STREAM, EventStore
from eventsource.relay import NatsSink, RelayWorker, status_rows
from tests.domain import Deposited, Opened
from tests.integration.test_relay import check_log
from tests.nats_support import PrivateNats, read_stream


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
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        for round_ in range(3):
            for i in range(40):
                store.append(f"acc-{i}", [Deposited(amount=n + 1) for n in range(5)])
            if round_ == 1:
                private_nats.stop()
                for i in range(40):  # appended while NATS is down
                    store.append(f"acc-{i}", [Deposited(amount=1)])
                time.sleep(1.0)
                assert thread.is_alive(), errors
                private_nats.start()
        heads = store.heads()
        deadline = time.monotonic() + 30
        while any(r["position"] < heads[r["partition"]] for r in status_rows(store)):
            assert thread.is_alive(), errors
            assert time.monotonic() < deadline, status_rows(store)
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(15)
    assert not errors
    check_log(store, read_stream(private_nats.url, stream), prefix)
