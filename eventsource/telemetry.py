"""Tracing and metrics: what the framework reports through OpenTelemetry, and helpers.

The framework uses the OpenTelemetry API only (instrumentation scope ``eventsource``). Nothing
is recorded until the application installs an SDK and sets its tracer and meter providers;
until then every span is a no-op that costs well under a microsecond, and nothing is added to
stored events or commands.

Spans (attributes under ``eventsource.``):

==================================  ======================================================
``eventsource.append``              a store append, or the staged appends of a transaction
                                    at commit: stream id and version, partition, position,
                                    event count (stream count for several streams)
``eventsource.repository.load``     aggregate type, id and version, events read
``eventsource.repository.save``     aggregate type, id and version, events saved
``eventsource.enqueue``             (producer) command type, queue, id, duplicate
``eventsource.command``             (consumer) one attempt: command id, type, queue,
                                    attempt, max attempts, outcome (``succeeded``,
                                    ``failed``, ``dead``, ``dropped``); a failed attempt
                                    records the handler's exception
``eventsource.projection.batch``    (consumer) projection, partition, from and to position,
                                    events; links to the spans that appended them
``eventsource.projection.handler``  a projection handler that raised: projection, handler,
                                    event type, stream, version, partition, position, error
==================================  ======================================================

Trace context: events appended inside a recording span carry its W3C context in their
metadata (``traceparent``, and ``tracestate``/``baggage`` when set), and a command row the
context of its enqueue span; a worker's span of each attempt is that span's child, so a
request, the commands it enqueued and their handlers form one trace. A reactor's enqueue
span is a child of its batch's span and links to the span that appended the event.

Metrics: ``eventsource.events.appended`` (counter), ``eventsource.append.duration``
(histogram, s), ``eventsource.projection.batch.duration`` (histogram, s; by projection),
``eventsource.projection.partitions.stopped`` (counter; by projection),
``eventsource.command.duration`` (histogram, s) and ``eventsource.command.attempts``
(counter), both by queue, command type and outcome, ``eventsource.command.dead_letters``
(counter; by queue and command type). Queue depth, lag and live workers are read from the
database by ``eventsource ops serve``'s ``/metrics``, not kept in a process.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.trace import Link

from eventsource._errors import EventSourceError
from eventsource._telemetry import SCOPE, TRACEPARENT, extract, links_to

__all__ = ["SCOPE", "TRACEPARENT", "event_link", "serve_metrics", "trace_context"]


def trace_context(record: Any) -> Context | None:
    """The OpenTelemetry context stored with an event (a ``RecordedEvent``, or its metadata),
    or None when it was appended outside a recording span.

    A projection handler can continue the trace of the request that appended the event::

        with tracer.start_as_current_span("send receipt", context=trace_context(record)):
            ...
    """
    metadata = record if isinstance(record, dict) else getattr(record, "metadata", None)
    return extract(metadata)


def event_link(record: Any) -> Link | None:
    """A span link to the span that appended an event (``RecordedEvent`` or its metadata), or
    None when it was appended outside a recording span."""
    metadata = record if isinstance(record, dict) else getattr(record, "metadata", None)
    found = links_to([metadata]) if metadata else []
    return found[0] if found else None


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve this process's metrics for Prometheus at ``http://host:port/metrics``.

    Installs an SDK ``MeterProvider`` with a Prometheus reader as the global one (unless one
    is set already: OpenTelemetry allows one per process) and starts
    ``prometheus_client``'s HTTP server on a daemon thread. Needs the packages
    ``opentelemetry-sdk`` and ``opentelemetry-exporter-prometheus`` (``EventSourceError``
    without them). ``eventsource worker run`` and ``eventsource projections run`` call it when
    ``EVENTSOURCE_METRICS_PORT`` is set (on ``EVENTSOURCE_METRICS_HOST``).
    """
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from prometheus_client import start_http_server  # noqa: PLC0415
    except ImportError as exc:
        raise EventSourceError(
            "serving metrics needs the OpenTelemetry SDK and Prometheus exporter: pip install"
            f" opentelemetry-sdk opentelemetry-exporter-prometheus ({exc})"
        ) from None
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    start_http_server(port, addr=host)
