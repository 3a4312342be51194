"""The framework's metrics through the OpenTelemetry API, and the spans that also count and
time what they cover: a write of appends, an attempt of a command, a projection batch.

Without an SDK the instruments are OpenTelemetry's proxies, which drop what they are given
(a fraction of a microsecond a call); see ``_telemetry`` for the spans.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import INVALID_SPAN, SpanKind

from eventsource._telemetry import (
    APPEND,
    BATCH,
    COMMAND,
    HANDLER,
    NO_SPAN,
    SCOPE,
    NoSpan,
    Span,
    extract,
    fail_span,
    links_to,
    tracer,
    tracing,
)

__all__ = [
    "AppendSpan",
    "BatchSpan",
    "attempted",
    "command_span",
    "dead_lettered",
    "handler_failed",
    "metering",
    "observed",
    "partition_stopped",
]

meter = metrics.get_meter(SCOPE)


def metering() -> bool:
    """Whether a meter provider (an SDK) may be set: if not, every instrument drops what it
    is given, and the worker's hot paths skip even timing what they would record.

    Like ``tracing`` it reads the API's own global, the one its proxy instruments follow;
    should a later API rename it, the check says yes and the proxies decide, as before.
    """
    return getattr(_metrics_api, "_METER_PROVIDER", True) is not None


# Seconds, from half a millisecond (an append, an enqueue) to a minute (a long handler).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _seconds(name: str, description: str) -> metrics.Histogram:
    """A histogram of durations in seconds, with the framework's buckets."""
    return meter.create_histogram(
        name, unit="s", description=description, explicit_bucket_boundaries_advisory=_BUCKETS
    )


events_appended = meter.create_counter(
    "eventsource.events.appended", unit="{event}", description="Events appended to the log."
)
append_duration = _seconds(
    "eventsource.append.duration",
    "Time to write an append (a store append, or a transaction's staged appends).",
)
batch_duration = _seconds(
    "eventsource.projection.batch.duration",
    "Time of one projection batch: lock, read, handle, checkpoint, commit.",
)
partitions_stopped = meter.create_counter(
    "eventsource.projection.partitions.stopped",
    unit="{partition}",
    description="Partitions of a projection stopped on an event whose handler kept failing.",
)
command_duration = _seconds(
    "eventsource.command.duration",
    "Time of one attempt of a command: its handler, and its ack or failure.",
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
        if not metering() and not self.span.is_recording():
            return  # no SDK: nothing would be recorded
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


def observed() -> bool:
    """Whether spans or metrics may record (an SDK provider of either is set)."""
    return tracing() or metering()


def command_span(headers: Mapping[str, Any] | None) -> Span | NoSpan:
    """The consumer span of one attempt of a command, a child of the span that enqueued it
    (``headers``: the command row's stored trace context)."""
    if not tracing():
        return NO_SPAN
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
        if metering():
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
    span = tracer.start_span(HANDLER) if tracing() else INVALID_SPAN
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
    fail_span(span, exc)
    span.end()


def partition_stopped(projection: str, partition: int) -> None:
    """Count a partition stopped on an event whose handler kept failing (and say so on the
    current span, the batch's)."""
    partitions_stopped.add(1, {"eventsource.projection": projection})
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("eventsource.partition.stopped", True)
