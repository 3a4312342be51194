"""The public telemetry helpers and the trace context of metadata, without a database."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from eventsource import telemetry
from eventsource._context import with_context

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
HEADER = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"


def test_the_public_names() -> None:
    """``eventsource.telemetry`` exports these names."""
    assert sorted(telemetry.__all__) == [
        "SCOPE",
        "TRACEPARENT",
        "event_link",
        "serve_metrics",
        "trace_context",
    ]
    assert (telemetry.SCOPE, telemetry.TRACEPARENT) == ("eventsource", "traceparent")


def test_trace_context_of_an_event_that_carries_one() -> None:
    """The context stored in metadata is the remote parent it names."""
    context = telemetry.trace_context({"traceparent": HEADER, "correlation_id": "c"})
    assert context is not None
    span_context = trace.get_current_span(context).get_span_context()
    assert (span_context.trace_id, span_context.span_id) == (TRACE_ID, SPAN_ID)
    assert span_context.is_remote
    link = telemetry.event_link({"traceparent": HEADER})
    assert link is not None
    assert (link.context.trace_id, link.context.span_id) == (TRACE_ID, SPAN_ID)


def test_no_trace_context_without_one() -> None:
    """Metadata without a (valid) traceparent has no context and no link."""
    assert telemetry.trace_context({}) is None
    assert telemetry.trace_context({"correlation_id": "c"}) is None
    assert telemetry.event_link({"traceparent": "not a header"}) is None


def test_metadata_gets_no_trace_context_outside_a_recording_span() -> None:
    """Without a span, or inside one that does not record, metadata is left as it is; a
    caller's own traceparent is kept."""
    assert with_context(None) is None
    assert with_context({"a": 1}) == {"a": 1}
    remote = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, True, TraceFlags(1)))
    with trace.use_span(remote):
        assert with_context(None) is None
    assert with_context({"traceparent": "mine"}) == {"traceparent": "mine"}


def test_the_no_sdk_check_reads_the_apis_own_global() -> None:
    """The check that skips no-op spans reads the global that OpenTelemetry's proxy tracer
    reads (if a new API renamed it, spans would still work, only cost a little more)."""
    assert hasattr(trace, "_TRACER_PROVIDER")


def test_the_no_sdk_check_of_metrics_reads_the_apis_own_global() -> None:
    """Likewise for metrics: the global that OpenTelemetry's proxy instruments follow."""
    from opentelemetry.metrics import _internal  # noqa: PLC0415

    assert hasattr(_internal, "_METER_PROVIDER")
