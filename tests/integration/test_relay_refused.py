"""The relay when JetStream refuses messages: each partition's stored messages stay a dense
prefix of its log, checkpoints go no further, the errors show, nothing is skipped."""

from __future__ import annotations

import time
from typing import Any

from eventsource import NO_STREAM, EventStore, partition_for
from eventsource.relay import NatsSink, RelayWorker, status_rows
from tests.background import Background
from tests.domain import Deposited, Opened
from tests.nats_support import jetstream, nats, read_stream

LIMIT = 25  # messages the stream takes before it refuses the rest


def _relay_until_refused(store: EventStore, sink: NatsSink, batch_size: int) -> None:
    """Run a relay until every partition is relayed or refused, then stop it."""
    worker = RelayWorker(store, sink, lease_ttl=2.0, heartbeat_interval=0.2, batch_size=batch_size)
    heads = store.heads()
    with Background(worker) as running:
        deadline = time.monotonic() + 30
        while not all(
            r["error"] is not None or r["position"] == heads[r["partition"]]
            for r in status_rows(store)
            if r["relay"] == sink.stream
        ):
            assert running.alive(), running.errors
            assert time.monotonic() < deadline, status_rows(store)
            time.sleep(0.05)
    assert not running.errors


def test_refused_messages_leave_a_dense_prefix_of_each_partition(
    store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """A stream full after LIMIT messages (discard new) refuses the rest: in windows of 3,
    read ahead while the acks come, no partition has a gap or a message past a refused one,
    the checkpoints are what the stream holds, and the refusal is on show."""
    stream, prefix = target
    for i in range(20):
        store.append(f"acc-{i}", [Opened(owner="o"), Deposited(amount=1)], NO_STREAM)

    async def create(js: Any) -> None:
        api = nats.js.api
        await js.add_stream(
            name=stream,
            subjects=[f"{prefix}.*"],
            duplicate_window=300,
            max_msgs=LIMIT,
            discard=api.DiscardPolicy.NEW,
        )

    jetstream(nats_url, create)
    sink = NatsSink(nats_url, stream=stream, subject_prefix=prefix)
    _relay_until_refused(store, sink, batch_size=3)
    messages = read_stream(nats_url, stream)
    assert len(messages) == LIMIT
    stored: dict[int, list[int]] = {}
    for m in messages:
        stored.setdefault(int(m.headers["Es-Partition"]), []).append(int(m.headers["Es-Position"]))
    rows = {r["partition"]: r for r in status_rows(store) if r["relay"] == stream}
    for partition, row in rows.items():
        positions = stored.get(partition, [])
        assert positions == list(range(1, len(positions) + 1)), (partition, positions)
        assert row["position"] == len(positions)
    refused = [r for r in rows.values() if r["error"] is not None]
    assert refused
    assert all("maximum messages exceeded" in r["error"] for r in refused)


def test_a_message_refused_by_the_server_holds_back_what_follows_it(
    store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """The stream's message size limit lowered under a running relay: the server refuses an
    event too big for it, and the event after it, small and already read ahead, is not sent
    (it would leave a gap); the partition waits on the refused one, its error on show."""
    stream, prefix = target
    partition = partition_for("small", store.partitions)
    big = next(
        f"big-{i}" for i in range(1000) if partition_for(f"big-{i}", store.partitions) == partition
    )
    store.append("small", [Opened(owner="o")], NO_STREAM)
    sink = NatsSink(nats_url, stream=stream, subject_prefix=prefix)
    worker = RelayWorker(store, sink, lease_ttl=2.0, heartbeat_interval=0.2, batch_size=1)

    def row() -> dict[str, Any]:
        (found,) = [r for r in status_rows(store) if r["partition"] == partition]
        return found

    with Background(worker) as running:
        deadline = time.monotonic() + 30
        while row()["position"] < 1:
            assert running.alive() and time.monotonic() < deadline, running.errors
            time.sleep(0.05)

        async def shrink(js: Any) -> None:
            info = await js.stream_info(stream)
            info.config.max_msg_size = 2000
            await js.update_stream(info.config)

        jetstream(nats_url, shrink)
        with store.transaction() as tx:
            store.append(big, [Opened(owner="x" * 3000)], NO_STREAM, tx=tx)
            store.append("small", [Deposited(amount=1)], 1, tx=tx)
        while row()["error"] is None:
            assert running.alive() and time.monotonic() < deadline, running.errors
            time.sleep(0.05)
        time.sleep(0.5)  # a retry or two
    assert not running.errors
    positions = [int(m.headers["Es-Position"]) for m in read_stream(nats_url, stream)]
    assert positions == [1]
    assert row()["position"] == 1
    assert "at position 2" in row()["error"]
