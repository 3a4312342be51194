"""The relay's spans: a window handed to JetStream and its acknowledgements, linked to the
traces that appended its events."""

from __future__ import annotations

from opentelemetry.trace import SpanKind

from eventsource import NO_STREAM, EventStore
from tests.domain import Opened
from tests.integration._telemetry_support import Telemetry
from tests.integration.test_relay import relay


def test_a_window_is_sent_and_settled_in_producer_spans_linked_to_its_events(
    otel: Telemetry, store: EventStore, nats_url: str, target: tuple[str, str]
) -> None:
    """One send and one settle span per window, naming the stream and counting the messages;
    the send span links to the span that appended the events."""
    stream, prefix = target
    with otel.tracer.start_as_current_span("request") as request:
        store.append("acc-1", [Opened(owner="a")], NO_STREAM)
        store.append("acc-2", [Opened(owner="b")], NO_STREAM)
    relay(store, nats_url, stream, prefix)
    send = otel.one("eventsource.relay.send")
    settle = otel.one("eventsource.relay.settle")
    for span in (send, settle):
        assert span.kind == SpanKind.PRODUCER
        assert span.attributes is not None
        assert span.attributes["messaging.destination.name"] == stream
        assert span.attributes["messaging.batch.message_count"] == 2
    appended = otel.spans("eventsource.append")
    assert appended and all(
        s.context.trace_id == request.get_span_context().trace_id for s in appended
    )
    linked = {link.context.span_id for link in send.links}
    assert linked == {s.context.span_id for s in appended}
