"""Tracing through the OpenTelemetry API: the framework's spans, and the trace context that
events and commands carry (the metric instruments, and the spans that also count and time
what they cover, are in ``_instrumented``).

Only the API is used. Until an application installs an SDK, the tracer below is
OpenTelemetry's proxy, whose spans do not record; the framework's hot paths (append,
enqueue, a command's attempt, a projection batch) must then cost next to nothing. Hence:

- while no tracer provider is set at all, no span is even started (``tracing``);
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
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, Link, SpanKind, Status, StatusCode

__all__ = [
    "APPEND",
    "BATCH",
    "COMMAND",
    "ENQUEUE",
    "HANDLER",
    "NO_SPAN",
    "SCOPE",
    "TRACEPARENT",
    "NoSpan",
    "Span",
    "carrier",
    "enqueue_span",
    "extract",
    "fail_current",
    "fail_span",
    "linked",
    "links_to",
    "stored_carrier",
    "traced",
    "tracer",
    "tracing",
]

SCOPE = "eventsource"  # the instrumentation scope of the framework's tracer and meter
TRACEPARENT = "traceparent"  # the W3C header, and the metadata key that holds it
APPEND = "eventsource.append"  # the span of a write of appends
ENQUEUE = "eventsource.enqueue"  # the span of an enqueue (one command, or many)
COMMAND = "eventsource.command"  # the span of one attempt of a command
BATCH = "eventsource.projection.batch"  # the span of one projection batch
HANDLER = "eventsource.projection.handler"  # a projection handler that raised

tracer = trace.get_tracer(SCOPE)

# Links for the next enqueue spans: set by a reactor around the enqueues of one event.
_links: contextvars.ContextVar[Sequence[Link] | None] = contextvars.ContextVar(
    "eventsource_span_links", default=None
)


def tracing() -> bool:
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
            tracer.start_span(name, context, kind, None, links) if tracing() else INVALID_SPAN
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
                fail_span(self.span, exc)
        finally:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self.span.end()


class NoSpan:
    """What ``traced`` gives while no tracer provider is set: a block that does nothing."""

    __slots__ = ()
    span = INVALID_SPAN

    def __enter__(self) -> trace.Span:
        return INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


NO_SPAN = NoSpan()


def traced(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    *,
    context: otel_context.Context | None = None,
) -> Span | NoSpan:
    """``with traced(name) as span:``, a ``Span``; while no tracer provider is set, a shared
    block that does nothing (cheaper still than a no-op span)."""
    if not tracing():
        return NO_SPAN
    return Span(name, kind, context=context)


def enqueue_span(name: str) -> Span | NoSpan:
    """A producer span for an enqueue, linked to a reactor's event inside ``linked``."""
    if not tracing():
        return NO_SPAN
    return Span(name, SpanKind.PRODUCER, links=_links.get())


def fail_span(span: trace.Span, exc: BaseException) -> None:
    """Record ``exc`` on a recording ``span`` and set its status to error."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def fail_current(exc: BaseException) -> None:
    """Record ``exc`` on the current span and mark it failed (if it records)."""
    span = trace.get_current_span()
    if span.is_recording():
        fail_span(span, exc)


def carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers (``traceparent``, and ``tracestate`` or
    ``baggage`` when there are), or None when the current span does not record."""
    if not tracing() or not trace.get_current_span().is_recording():
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
