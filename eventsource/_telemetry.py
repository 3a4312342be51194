"""Tracing and metrics through the OpenTelemetry API: the framework's spans and instruments,
and the trace context that events and commands carry.

Only the API is used. Until an application installs an SDK, the tracer and the meter below
are OpenTelemetry's proxies, whose spans do not record and whose instruments drop what they
are given; the framework's hot paths (append, enqueue, a command's attempt, a projection
batch) must then cost next to nothing. Hence:

- a span is started with ``start_span`` and made the current span only if it records
  (attaching a context costs more than the rest of a no-op span together);
- attributes are set, and links built, only on recording spans;
- trace context is written (into event metadata, onto command rows) only from a recording
  span, so that without an SDK stored events and commands are exactly what they were.

The public side (names, ``trace_context``, ``serve_metrics``) is ``eventsource.telemetry``.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import INVALID_SPAN, Link, SpanKind, Status, StatusCode

__all__ = [
    "APPEND",
    "BATCH",
    "COMMAND",
    "ENQUEUE",
    "HANDLER",
    "SCOPE",
    "TRACEPARENT",
    "AppendSpan",
    "BatchSpan",
    "Span",
    "attempted",
    "carrier",
    "command_span",
    "dead_lettered",
    "enqueue_span",
    "extract",
    "fail_current",
    "handler_failed",
    "linked",
    "links_to",
    "partition_stopped",
    "stored_carrier",
]

SCOPE = "eventsource"  # the instrumentation scope of the framework's tracer and meter
TRACEPARENT = "traceparent"  # the W3C header, and the metadata key that holds it
APPEND = "eventsource.append"  # the span of a write of appends
ENQUEUE = "eventsource.enqueue"  # the span of an enqueue (one command, or many)
COMMAND = "eventsource.command"  # the span of one attempt of a command
BATCH = "eventsource.projection.batch"  # the span of one projection batch
HANDLER = "eventsource.projection.handler"  # a projection handler that raised

tracer = trace.get_tracer(SCOPE)
meter = metrics.get_meter(SCOPE)

# Seconds, from half a millisecond (an append, an enqueue) to a minute (a long handler).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

events_appended = meter.create_counter(
    "eventsource.events.appended", unit="{event}", description="Events appended to the log."
)
append_duration = meter.create_histogram(
    "eventsource.append.duration",
    unit="s",
    description="Time to write an append (a store append, or a transaction's staged appends).",
    explicit_bucket_boundaries_advisory=_BUCKETS,
)
batch_duration = meter.create_histogram(
    "eventsource.projection.batch.duration",
    unit="s",
    description="Time of one projection batch: lock, read, handle, checkpoint, commit.",
    explicit_bucket_boundaries_advisory=_BUCKETS,
)
partitions_stopped = meter.create_counter(
    "eventsource.projection.partitions.stopped",
    unit="{partition}",
    description="Partitions of a projection stopped on an event whose handler kept failing.",
)
command_duration = meter.create_histogram(
    "eventsource.command.duration",
    unit="s",
    description="Time of one attempt of a command: its handler, and its ack or failure.",
    explicit_bucket_boundaries_advisory=_BUCKETS,
)
command_attempts = meter.create_counter(
    "eventsource.command.attempts",
    unit="{attempt}",
    description="Attempts of commands, by outcome: succeeded, failed, dead or dropped.",
)
dead_letters = meter.create_counter(
    "eventsource.command.dead_letters",
    unit="{command}",
    description="Commands that failed their last attempt and were dead-lettered.",
)

# Links for the next enqueue spans: set by a reactor around the enqueues of one event.
_links: contextvars.ContextVar[Sequence[Link] | None] = contextvars.ContextVar(
    "eventsource_span_links", default=None
)


def _tracing() -> bool:
    """Whether a tracer provider (an SDK) may be set: if not, every span is a no-op.

    OpenTelemetry's proxy tracer reads this module global of the API on every span, and so
    does this check, which skips the proxy's calls (a few microseconds on each append,
    enqueue and attempt). Should a later API rename it, the check says yes and the proxy
    decides, as before.
    """
    return getattr(trace, "_TRACER_PROVIDER", True) is not None


class Span:
    """A span of the framework's: started at once, the current span only while it records.

    ``with Span("eventsource.append") as span:`` gives the OpenTelemetry span (set
    attributes on it only ``if span.is_recording()``). An exception leaving the block is
    recorded on it and sets its status to error. ``context`` is the parent's (default: the
    current one); the enqueue spans of a reactor get its ``linked`` event's link.
    """

    __slots__ = ("_token", "span")

    def __init__(
        self,
        name: str,
        kind: SpanKind = SpanKind.INTERNAL,
        *,
        context: otel_context.Context | None = None,
        links: Sequence[Link] | None = None,
    ) -> None:
        self.span = (
            tracer.start_span(name, context, kind, None, links) if _tracing() else INVALID_SPAN
        )
        self._token: object | None = None

    def __enter__(self) -> trace.Span:
        span = self.span
        if span.is_recording():
            self._token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is None:
            return  # not recording: nothing to end (a no-op span)
        try:
            if exc is not None:
                _fail(self.span, exc)
        finally:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self.span.end()


def enqueue_span(name: str) -> Span:
    """A producer span for an enqueue, linked to a reactor's event inside ``linked``."""
    return Span(name, SpanKind.PRODUCER, links=_links.get())


def _fail(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def fail_current(exc: BaseException) -> None:
    """Record ``exc`` on the current span and mark it failed (if it records)."""
    span = trace.get_current_span()
    if span.is_recording():
        _fail(span, exc)


def carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers (``traceparent``, and ``tracestate`` or
    ``baggage`` when there are), or None when the current span does not record."""
    if not _tracing() or not trace.get_current_span().is_recording():
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


def stored_carrier() -> str | None:
    """``carrier()`` as the JSON stored on a command row (None: no trace)."""
    headers = carrier()
    return None if headers is None else json.dumps(headers)


def extract(headers: Mapping[str, Any] | None) -> otel_context.Context | None:
    """The context that headers stored with an event or command continue (None if none)."""
    if not headers or TRACEPARENT not in headers:
        return None
    return propagate.extract({k: v for k, v in headers.items() if isinstance(v, str)})


def links_to(headers: Sequence[Mapping[str, Any]], limit: int = 32) -> list[Link]:
    """Links to the distinct span contexts stored in ``headers`` (the first ``limit``)."""
    links: list[Link] = []
    seen: set[str] = set()
    for carried in headers:
        parent = carried.get(TRACEPARENT)
        if not isinstance(parent, str) or parent in seen:
            continue
        seen.add(parent)
        context = trace.get_current_span(extract(carried)).get_span_context()
        if context.is_valid:
            links.append(Link(context))
            if len(links) >= limit:
                break
    return links


class _Carried(Protocol):
    """What carries trace context: a stored event (``RecordedEvent``)."""

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The event's metadata."""


class linked:  # a context manager, named like contextlib's
    """Within this block, enqueue spans link to the span stored with ``record`` (an event).

    Only while the current span records: the event's metadata is not even decoded otherwise.
    """

    __slots__ = ("_record", "_token")

    def __init__(self, record: _Carried | None) -> None:
        self._record = record
        self._token: contextvars.Token[Sequence[Link] | None] | None = None

    def __enter__(self) -> None:
        if self._record is None or not trace.get_current_span().is_recording():
            return
        metadata = self._record.metadata
        if TRACEPARENT in metadata:
            self._token = _links.set(links_to([metadata]) or None)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _links.reset(self._token)


class _Written(Protocol):
    """A written append (``PendingAppend``)."""

    count: int

    @property
    def stream_id(self) -> str:
        """The stream appended to."""

    @property
    def result(self) -> Any:
        """Its ``AppendResult``."""


class AppendSpan(Span):
    """The span of a write of appends, which also times and counts it:
    ``with AppendSpan() as write: ...; write.written(pending_appends)``."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        super().__init__(APPEND)
        self.started = time.perf_counter()

    def __enter__(self) -> AppendSpan:  # type: ignore[override]
        super().__enter__()
        return self

    def written(self, appends: Sequence[_Written]) -> None:
        """Count the write of ``appends`` (written ``PendingAppend``s); describe it."""
        append_duration.record(time.perf_counter() - self.started)
        events = 0
        for pending in appends:
            if not pending.result.duplicate:
                events += pending.count
        if events:
            events_appended.add(events)
        if self.span.is_recording():
            self.span.set_attributes(_append_attributes(appends, events))


def _append_attributes(appends: Sequence[_Written], events: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {"eventsource.event.count": events}
    streams = {p.stream_id for p in appends}
    if len(streams) == 1:
        last = appends[-1].result
        attributes["eventsource.stream.id"] = last.stream_id
        attributes["eventsource.stream.version"] = last.stream_version
        attributes["eventsource.partition"] = last.partition
        attributes["eventsource.position"] = last.position
        attributes["eventsource.duplicate"] = last.duplicate
    else:
        attributes["eventsource.stream.count"] = len(streams)
        attributes["eventsource.partitions"] = sorted({p.result.partition for p in appends})
    return attributes


def command_span(headers: Mapping[str, Any] | None) -> Span:
    """The consumer span of one attempt of a command, a child of the span that enqueued it
    (``headers``: the command row's stored trace context)."""
    return Span(COMMAND, SpanKind.CONSUMER, context=extract(headers))


def attempted(queue: str, command_type: str, outcome: str, started: float) -> None:
    """Count an attempt of a command that ended with ``outcome`` and time it from
    ``started`` (``perf_counter``)."""
    attributes = {
        "eventsource.queue": queue,
        "eventsource.command.type": command_type,
        "eventsource.command.outcome": outcome,
    }
    command_duration.record(time.perf_counter() - started, attributes)
    command_attempts.add(1, attributes)


def dead_lettered(queue: str, command_type: str) -> None:
    """Count a command dead-lettered (its last attempt failed, or ran past its timeout)."""
    dead_letters.add(1, {"eventsource.queue": queue, "eventsource.command.type": command_type})


class BatchSpan(Span):
    """The consumer span of one projection batch, which also times it:
    ``with BatchSpan() as batch: ...; batch.done(projection, partition, records)``."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        super().__init__(BATCH, SpanKind.CONSUMER)
        self.started = time.perf_counter()

    def __enter__(self) -> BatchSpan:  # type: ignore[override]
        super().__enter__()
        return self

    def done(self, projection: str, partition: int, records: Sequence[Any]) -> None:
        """The batch of ``records`` (those read, whether applied or not) has ended."""
        if not records:
            return  # nothing was read: not a batch worth timing
        batch_duration.record(
            time.perf_counter() - self.started, {"eventsource.projection": projection}
        )
        span = self.span
        if not span.is_recording():
            return
        span.set_attributes(
            {
                "eventsource.projection": projection,
                "eventsource.partition": partition,
                "eventsource.position.from": records[0].position,
                "eventsource.position.to": records[-1].position,
                "eventsource.event.count": len(records),
            }
        )
        for link in links_to([r.metadata for r in records]):
            span.add_link(link.context)


def handler_failed(projection: str, handler: str, record: Any, exc: BaseException) -> None:
    """A projection handler raised ``exc`` on ``record``: a span of its own (a child of the
    batch's) that names them and records the error."""
    span = tracer.start_span(HANDLER) if _tracing() else INVALID_SPAN
    if not span.is_recording():
        return
    span.set_attributes(
        {
            "eventsource.projection": projection,
            "eventsource.handler": handler,
            "eventsource.event.type": record.event_type,
            "eventsource.stream.id": record.stream_id,
            "eventsource.stream.version": record.stream_version,
            "eventsource.partition": record.partition,
            "eventsource.position": record.position,
        }
    )
    _fail(span, exc)
    span.end()


def partition_stopped(projection: str, partition: int) -> None:
    """Count a partition stopped on an event whose handler kept failing (and say so on the
    current span, the batch's)."""
    partitions_stopped.add(1, {"eventsource.projection": projection})
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("eventsource.partition.stopped", True)
