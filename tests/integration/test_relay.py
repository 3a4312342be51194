"""The relay against the real NATS JetStream server: order, headers, exactly once, bad input."""

from __future__ import annotations

import time
from typing import Any

import pytest

from eventsource import NO_STREAM, EventStore, correlation
from eventsource.relay import (
    MalformedMessage,
    NatsSink,
    RelayWorker,
    SinkMisconfigured,
    SinkUnavailable,
    record_from_message,
    status_rows,
)
from tests.background import Background
from tests.domain import Deposited, Opened
from tests.integration._support import sql
from tests.nats_support import (
    Message,
    jetstream,
    nats,
    read_stream,
)


def fill(store: EventStore, streams: int, deposits: int) -> int:
    """Append to ``streams`` streams, each opened then ``deposits`` times; the event count."""
    for i in range(streams):
        store.append(f"acc-{i}", [Opened(owner=f"o{i}")], NO_STREAM)
        store.append(f"acc-{i}", [Deposited(amount=n + 1) for n in range(deposits)], 1)
    return streams * (deposits + 1)


def relay(store: EventStore, url: str, stream: str, prefix: str, **options: Any) -> RelayWorker:
    """Run a relay worker until its share is relayed; the worker."""
    sink = NatsSink(url, stream=stream, subject_prefix=prefix)
    worker = RelayWorker(store, sink, lease_ttl=2.0, heartbeat_interval=0.2, **options)
    worker.run(stop_when_caught_up=True)
    return worker


def check_log(store: EventStore, messages: list[Message], prefix: str) -> None:
    """The stream holds every event of the log exactly once, each partition in order."""
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids))
    stored = sql(store, "SELECT event_id::text, partition, position FROM {s}.events")
    assert sorted(ids) == sorted(str(r[0]) for r in stored)
    by_partition: dict[int, list[int]] = {}
    for m in messages:
        partition = int(m.headers["Es-Partition"])
        assert m.subject == f"{prefix}.{partition}"
        by_partition.setdefault(partition, []).append(int(m.headers["Es-Position"]))
    for positions in by_partition.values():
        assert positions == list(range(1, len(positions) + 1))


def test_relays_every_event_in_partition_order(
    store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """Every event reaches JetStream once, on its partition's subject, in position order."""
    stream, prefix = target
    total = fill(store, 20, 9)
    worker = relay(store, nats_url, stream, prefix, batch_size=7)
    assert worker.relayed == total
    messages = read_stream(nats_url, stream)
    check_log(store, messages, prefix)
    rows = status_rows(store)
    assert {r["relay"] for r in rows} == {stream}
    assert all(r["lag"] == 0 and r["position"] == r["head"] for r in rows)


def test_headers_rebuild_the_recorded_event(
    store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """A relayed message's headers and payload give back the stored record, metadata too."""
    stream, prefix = target
    with correlation("corr-1", "cause-1"):
        store.append("weird id/ é\nx", [Opened(owner="ö")], NO_STREAM)
    relay(store, nats_url, stream, prefix)
    (message,) = read_stream(nats_url, stream)
    record = record_from_message(message.headers, message.data)
    (stored,) = list(store.read_stream("weird id/ é\nx"))
    assert record.event_id == stored.event_id
    assert (record.stream_id, record.stream_version) == ("weird id/ é\nx", 1)
    assert (record.partition, record.position) == (stored.partition, stored.position)
    assert record.event == stored.event
    assert record.metadata == stored.metadata
    assert record.recorded_at == stored.recorded_at
    assert message.headers["Es-Correlation-Id"] == "corr-1"
    assert message.headers["Es-Causation-Id"] == "cause-1"


def test_malformed_headers_are_refused_by_name() -> None:
    """A message without the relay's headers, or with a malformed one, is refused by name."""
    with pytest.raises(MalformedMessage, match="lacks the relay headers"):
        record_from_message({}, b"{}")
    good = {
        "Es-Event-Id": "0190d1a0-0000-7000-8000-000000000001",
        "Es-Stream-Id": "a",
        "Es-Stream-Version": "1",
        "Es-Partition": "0",
        "Es-Position": "1",
        "Es-Event-Type": "test.Opened",
        "Es-Schema-Version": "1",
        "Es-Recorded-At": "2026-11-30T10:00:00+00:00",
        "Es-Metadata": "{}",
    }
    assert record_from_message(good, b'{"owner": "x"}').position == 1
    with pytest.raises(MalformedMessage, match="Es-Position"):
        record_from_message({**good, "Es-Position": "-1"}, b"{}")
    with pytest.raises(MalformedMessage, match="Es-Event-Id"):
        record_from_message({**good, "Es-Event-Id": "nope"}, b"{}")
    with pytest.raises(MalformedMessage, match="payload"):
        record_from_message(good, b"not json")


def test_a_rerun_publishes_nothing_again(
    store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """Relayed partitions stay relayed; new events go on after the old ones."""
    stream, prefix = target
    fill(store, 8, 3)
    relay(store, nats_url, stream, prefix)
    assert relay(store, nats_url, stream, prefix).relayed == 0
    fill_more = 5
    for i in range(fill_more):
        store.append(f"more-{i}", [Opened(owner="m")], NO_STREAM)
    assert relay(store, nats_url, stream, prefix).relayed == fill_more
    check_log(store, read_stream(nats_url, stream), prefix)


def test_checkpoints_behind_the_stream_move_to_its_tail(
    store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """A relay that crashed after the acknowledgements but before its checkpoint moved
    publishes nothing twice, even past the duplicate window: it resumes at the stream's tail."""
    stream, prefix = target
    fill(store, 8, 3)
    relay(store, nats_url, stream, prefix)
    sql(store, "UPDATE {s}.relay_checkpoints SET position = 1")
    assert relay(store, nats_url, stream, prefix).relayed == 0
    assert all(r["lag"] == 0 for r in status_rows(store))
    check_log(store, read_stream(nats_url, stream), prefix)


def test_existing_stream_with_other_subjects_is_refused(
    store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """A stream whose subjects do not cover the prefix is an error naming ``subjects``."""
    stream, prefix = target

    async def create(js: Any) -> None:
        await js.add_stream(name=stream, subjects=[f"{prefix}other.*"], duplicate_window=300)

    jetstream(nats_url, create)
    sink = NatsSink(nats_url, stream=stream, subject_prefix=prefix)
    with pytest.raises(SinkMisconfigured, match="subjects") as info:
        RelayWorker(store, sink).run()
    assert info.value.setting == "subjects"


def test_existing_stream_with_a_short_duplicate_window_is_refused(
    store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """A stream whose duplicate window is too short is an error naming ``duplicate_window``."""
    stream, prefix = target

    async def create(js: Any) -> None:
        await js.add_stream(name=stream, subjects=[f"{prefix}.*"], duplicate_window=5)

    jetstream(nats_url, create)
    sink = NatsSink(nats_url, stream=stream, subject_prefix=prefix)
    with pytest.raises(SinkMisconfigured, match="duplicate_window") as info:
        RelayWorker(store, sink).run()
    assert info.value.setting == "duplicate_window"


def test_existing_stream_without_acknowledgements_is_refused(
    store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """A stream that does not acknowledge is an error naming ``no_ack``; nothing relayed."""
    stream, prefix = target
    store.append("a", [Opened(owner="a")], NO_STREAM)

    async def create(js: Any) -> None:
        await js.add_stream(
            name=stream, subjects=[f"{prefix}.*"], duplicate_window=300, no_ack=True
        )

    jetstream(nats_url, create)
    sink = NatsSink(nats_url, stream=stream, subject_prefix=prefix)
    with pytest.raises(SinkMisconfigured, match="no_ack") as info:
        RelayWorker(store, sink).run()
    assert info.value.setting == "no_ack"
    assert read_stream(nats_url, stream) == []


@pytest.mark.parametrize("name", ["", "a b", "a.b", "a*", "a>", "../x", "$SYS", "é"])
def test_hostile_stream_names_are_refused(name: str) -> None:
    """Stream names that are not plain tokens are refused before anything connects."""
    with pytest.raises(ValueError, match="stream name"):
        NatsSink("nats://127.0.0.1:4222", stream=name)


@pytest.mark.parametrize("prefix", ["", "a b", "a..b", ".a", "a.", "a.*", "a.>", "a\nb"])
def test_hostile_subject_prefixes_are_refused(prefix: str) -> None:
    """Subject prefixes with empty tokens, spaces or wildcards are refused."""
    with pytest.raises(ValueError, match="subject prefix"):
        NatsSink("nats://127.0.0.1:4222", subject_prefix=prefix)


@pytest.mark.parametrize("url", ["", "http://x:1", "nats://", "127.0.0.1:4222", "nats://h:99999"])
def test_bad_urls_are_refused(url: str) -> None:
    """URLs that are not NATS server URLs are refused."""
    with pytest.raises(ValueError, match="NATS URL"):
        NatsSink(url)


def test_a_short_dedupe_window_for_the_lease_is_refused(store: EventStore) -> None:
    """The duplicate window must outlast the lease TTL with a margin."""
    sink = NatsSink("nats://127.0.0.1:4222", duplicate_window=40)
    with pytest.raises(ValueError, match="duplicate window"):
        RelayWorker(store, sink, lease_ttl=15)


def test_unreachable_nats_is_waited_out(store: EventStore) -> None:
    """With NATS unreachable the relay keeps retrying (one-line error); it does not exit."""
    sink = NatsSink("nats://127.0.0.1:1", stream="X", connect_timeout=0.5)
    with pytest.raises(SinkUnavailable) as info:
        sink.open()
    assert "\n" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)
    running = Background(RelayWorker(store, sink, lease_ttl=2.0, heartbeat_interval=0.2))
    time.sleep(1.5)
    assert running.alive()
    running.stop(10)
    assert not running.alive() and not running.errors
    sink.close()


def test_nats_importable() -> None:
    """The tests run with nats-py installed (the dev extra)."""
    assert nats is not None
