"""An OpenTelemetry SDK for the telemetry tests, installed once per process.

OpenTelemetry's global providers can be set only once in a process, and the framework's tracer
and meter are the API's proxies for whatever is set. The tests install one SDK tracer provider
with an in-memory span exporter and one meter provider with an in-memory reader (delta
temporality: each read returns what was recorded since the previous one). The tracer's
sampler is a switch, off unless a test turns it on: spans of other tests do not record, so the
events and commands they store carry no trace context, as without an SDK.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes


class Switch(Sampler):
    """Records every span while ``on``, none otherwise."""

    on = False

    def should_sample(  # noqa: PLR0917 (the signature of the SDK's Sampler)
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        """Record and sample while on; drop otherwise."""
        if self.on:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        """The sampler's name."""
        return "Switch"


class Telemetry:
    """The in-memory SDK: finished spans and recorded metrics."""

    def __init__(self) -> None:
        self.switch = Switch()
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=self.switch)
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        trace.set_tracer_provider(provider)
        self.reader = InMemoryMetricReader(
            preferred_temporality={
                Counter: AggregationTemporality.DELTA,
                Histogram: AggregationTemporality.DELTA,
            }
        )
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.reader]))
        self.tracer = trace.get_tracer("tests")

    def start(self) -> None:
        """Record from now on, with nothing recorded before."""
        self.exporter.clear()
        self.reader.get_metrics_data()  # delta: the next read starts here
        self.switch.on = True

    def stop(self) -> None:
        """Record nothing more."""
        self.switch.on = False

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """The finished spans (of this name), in the order they ended."""
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        """The one finished span of this name."""
        found = self.spans(name)
        assert len(found) == 1, f"{len(found)} spans named {name}: {found}"
        return found[0]

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """What the framework recorded since the last read: metric name -> (attributes, sum
        of a counter or count of a histogram) per series."""
        data = self.reader.get_metrics_data()
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                if scope.scope.name != "eventsource":
                    continue
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "count", None)
                        if value is None:
                            value = point.value  # type: ignore[union-attr]
                        out.setdefault(metric.name, []).append(
                            (dict(point.attributes or {}), value)
                        )
        return out


_installed: Telemetry | None = None


def installed() -> Telemetry:
    """The process's in-memory SDK, installed on first use."""
    global _installed  # noqa: PLW0603 (one SDK per process: OpenTelemetry's rule)
    if _installed is None:
        _installed = Telemetry()
    return _installed


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    """The in-memory SDK, recording for this test only."""
    telemetry = installed()
    telemetry.start()
    yield telemetry
    telemetry.stop()
