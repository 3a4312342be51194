"""The relay's message format, without a server: headers out and back, names checked."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from eventsource.relay import (
    MSG_ID,
    MalformedMessage,
    check_stream_name,
    check_subject_prefix,
    record_from_message,
    relay_message,
    safe_nats_url,
)
from eventsource.store import RecordedEvent


def _record(stream_id: str = "acc-1", metadata: dict[str, object] | None = None) -> RecordedEvent:
    """A stored event as a reader would get it."""
    return RecordedEvent(
        str(uuid.uuid4()),
        stream_id,
        3,
        5,
        42,
        "bank.Deposited",
        2,
        '{"amount": 7}',
        json.dumps(metadata or {}),
        datetime(2026, 11, 30, 10, 0, tzinfo=UTC),
    )


def test_a_message_carries_the_event_and_comes_back_whole() -> None:
    """Subject per partition, event id as Nats-Msg-Id, every field back from the headers."""
    record = _record("weird id\nwith ünïcode/and.dots", {"correlation_id": "c-1", "x": "é"})
    message = relay_message(record, "events")
    assert message.subject == "events.5"
    assert message.headers[MSG_ID] == str(record.event_id) == message.msg_id
    assert message.headers["Es-Correlation-Id"] == "c-1"
    assert all(value.isascii() and "\n" not in value for value in message.headers.values())
    back = record_from_message(message.headers, message.payload)
    assert back.event_id == record.event_id
    assert (back.stream_id, back.stream_version) == (record.stream_id, 3)
    assert (back.partition, back.position) == (5, 42)
    assert (back.event_type, back.schema_version) == ("bank.Deposited", 2)
    assert back.data == {"amount": 7}
    assert back.metadata == {"correlation_id": "c-1", "x": "é"}
    assert back.recorded_at == record.recorded_at


def test_a_record_of_the_stores_readers_relays_its_id_and_bare_payload() -> None:
    """The store's readers splice the event id into the payload's document (their rows' id
    column is empty): the message still carries that id, and the payload without it."""
    event_id = str(uuid.uuid4())
    record = RecordedEvent(
        "",
        "acc-1",
        3,
        5,
        42,
        "bank.Deposited",
        2,
        '{"event_id":"' + event_id + '","amount": 7}',
        "{}",
        datetime(2026, 11, 30, 10, 0, tzinfo=UTC),
    )
    message = relay_message(record, "events")
    assert message.headers[MSG_ID] == event_id == message.msg_id
    assert json.loads(message.payload) == {"amount": 7}
    back = record_from_message(message.headers, message.payload)
    assert str(back.event_id) == event_id
    assert back.data == record.data == {"amount": 7}


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Es-Stream-Version", "x"),
        ("Es-Partition", "-1"),
        ("Es-Position", "1.5"),
        ("Es-Schema-Version", ""),
        ("Es-Recorded-At", "yesterday"),
        ("Es-Metadata", "[1]"),
        ("Es-Stream-Id", ""),
    ],
)
def test_a_malformed_header_is_named(header: str, value: str) -> None:
    """Each malformed header is refused with its name."""
    message = relay_message(_record(), "events")
    headers = {**message.headers, header: value}
    with pytest.raises(MalformedMessage, match=header):
        record_from_message(headers, message.payload)


@pytest.mark.parametrize("name", ["EVENTS", "orders-v2", "a_b"])
def test_plain_stream_names_pass(name: str) -> None:
    """Letters, digits, '_' and '-' make a stream name."""
    assert check_stream_name(name) == name


@pytest.mark.parametrize("prefix", ["events", "app.events", "a-b.c_d"])
def test_dotted_prefixes_pass(prefix: str) -> None:
    """A prefix may hold several tokens."""
    assert check_subject_prefix(prefix) == prefix


def test_passwords_are_masked_in_urls() -> None:
    """A NATS URL's password never shows in messages."""
    assert safe_nats_url("nats://u:secret@h:4222") == "nats://u:***@h:4222"
    assert "secret" not in safe_nats_url("nats://secret@h:4222")
