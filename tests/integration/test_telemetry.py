"""Tracing and metrics through OpenTelemetry, with the SDK's in-memory exporter and reader:
the spans of appends, repositories, enqueues, attempts and projection batches, the trace
context carried by events and commands, and the metrics."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import Connection

from eventsource import (
    NO_STREAM,
    AsyncCommandQueue,
    AsyncEventStore,
    Command,
    CommandContext,
    CommandQueue,
    CommandWorker,
    EventStore,
    RecordedEvent,
    Repository,
    commands_running,
    current_correlation,
)
from eventsource.commands import HandlerSpec
from eventsource.db import quote_schema
from eventsource.testing import drain, run_projections
from projections import Projection, Reactor, handles
from tests.domain import Counter, Deposited, Opened
from tests.integration._telemetry_support import Telemetry, installed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parent_of(span: ReadableSpan) -> int | None:
    """The span id of a span's parent (None for a root span)."""
    return span.parent.span_id if span.parent is not None else None


def traceparent(span: ReadableSpan) -> str:
    """The W3C traceparent header of a (sampled) span."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def ids(contexts: Any) -> list[tuple[int, int]]:
    """(trace id, span id) of span contexts (or of the contexts of links)."""
    return [(getattr(c, "context", c).trace_id, getattr(c, "context", c).span_id) for c in contexts]


class Ping(Command, name="test.telemetry.Ping", queue="telemetry"):
    n: int


class Boom(Command, name="test.telemetry.Boom", queue="telemetry", max_attempts=1):
    pass


# -- spans and trace context of the store, the repository and the queue --------------------


def test_append_span_and_the_events_trace_context(otel: Telemetry, store: EventStore) -> None:
    """An append in a request's span is its child, with the stream, partition, position and
    event count; its events carry the append span's context in their metadata."""
    with otel.tracer.start_as_current_span("request") as request:
        result = store.append("s-1", [Opened(owner="ann"), Deposited(amount=1)], NO_STREAM)
    span = otel.one("eventsource.append")
    assert span.context.trace_id == request.get_span_context().trace_id
    assert parent_of(span) == request.get_span_context().span_id
    assert span.attributes == {
        "eventsource.event.count": 2,
        "eventsource.stream.id": "s-1",
        "eventsource.stream.version": 2,
        "eventsource.partition": result.partition,
        "eventsource.position": result.position,
        "eventsource.duplicate": False,
    }
    for record in store.read_stream("s-1"):
        assert record.metadata == {"traceparent": traceparent(span)}


def test_transaction_appends_are_one_span(otel: Telemetry, store: EventStore) -> None:
    """The staged appends of a transaction are written in one span, at commit; their events
    carry the context of the span they were staged in."""
    with otel.tracer.start_as_current_span("request"), store.transaction() as tx:
        store.append("s-1", [Opened(owner="ann")], NO_STREAM, tx=tx)
        store.append("s-2", [Opened(owner="bob"), Deposited(amount=2)], NO_STREAM, tx=tx)
    request = otel.one("request")
    span = otel.one("eventsource.append")
    assert parent_of(span) == request.context.span_id
    assert span.attributes is not None
    assert span.attributes["eventsource.event.count"] == 3
    assert span.attributes["eventsource.stream.count"] == 2
    assert store.read_stream("s-2")[1].metadata == {"traceparent": traceparent(request)}


def test_repository_load_and_save_spans(otel: Telemetry, store: EventStore) -> None:
    """A repository's save is the parent of its append; a load names the aggregate, its
    version and the events read."""
    repo = Repository(store, Counter)
    counter = Counter("c-1")
    counter.open("ann")
    counter.add(5)
    repo.save(counter)
    loaded = repo.load("c-1")
    assert loaded.total == 5
    save = otel.one("eventsource.repository.save")
    assert parent_of(otel.one("eventsource.append")) == save.context.span_id
    assert save.attributes == {
        "eventsource.aggregate.type": "test.Counter",
        "eventsource.aggregate.id": "c-1",
        "eventsource.aggregate.version": 2,
        "eventsource.event.count": 2,
    }
    load = otel.one("eventsource.repository.load")
    assert load.attributes == {
        "eventsource.aggregate.type": "test.Counter",
        "eventsource.aggregate.id": "c-1",
        "eventsource.aggregate.version": 2,
        "eventsource.event.count": 2,
        "eventsource.snapshot.version": 0,
    }


def test_enqueue_span_and_the_commands_trace_context(otel: Telemetry, store: EventStore) -> None:
    """An enqueue is a producer span (type, queue, id); the command row stores its context."""
    with otel.tracer.start_as_current_span("request"):
        enqueued = CommandQueue(store).enqueue(Ping(n=1))
    span = otel.one("eventsource.enqueue")
    assert span.kind is SpanKind.PRODUCER
    assert parent_of(span) == otel.one("request").context.span_id
    assert span.attributes == {
        "eventsource.command.type": "test.telemetry.Ping",
        "eventsource.queue": "telemetry",
        "eventsource.command.duplicate": False,
        "eventsource.command.id": enqueued.id,
    }
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql(
            f"SELECT trace_context FROM {quote_schema(store.schema)}.commands"
        ).scalar_one()
    assert stored == {"traceparent": traceparent(span)}


# -- one trace from a request to a worker --------------------------------------------------


def test_a_command_enqueued_in_a_request_is_handled_in_its_trace(
    otel: Telemetry, store: EventStore
) -> None:
    """A worker's span of the attempt is a child of the enqueue's span, in the request's
    trace; so are the handler's own spans and the events it appends."""
    seen: list[trace.SpanContext] = []

    def ping(command: Ping, ctx: CommandContext) -> None:
        seen.append(trace.get_current_span().get_span_context())
        store.append(f"ping-{command.n}", [Opened(owner="worker")], NO_STREAM)

    with otel.tracer.start_as_current_span("request") as request:
        CommandQueue(store).enqueue(Ping(n=1))
    worker = CommandWorker(
        store,
        ["telemetry"],
        handlers={Ping.command_type: HandlerSpec(Ping, ping, False, None)},
        poll_interval=0.05,
    )
    thread = threading.Thread(target=worker.run, kwargs={"stop_when_idle": True})
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()

    trace_id = request.get_span_context().trace_id
    enqueue = otel.one("eventsource.enqueue")
    handled = otel.one("eventsource.command")
    assert handled.kind is SpanKind.CONSUMER
    assert handled.context.trace_id == trace_id
    assert parent_of(handled) == enqueue.context.span_id
    assert seen == [handled.context]  # the handler runs in the attempt's span
    assert handled.attributes is not None
    assert handled.attributes["eventsource.command.type"] == "test.telemetry.Ping"
    assert handled.attributes["eventsource.queue"] == "telemetry"
    assert handled.attributes["eventsource.command.attempt"] == 1
    assert handled.attributes["eventsource.command.outcome"] == "succeeded"
    append = otel.one("eventsource.append")
    assert parent_of(append) == handled.context.span_id
    assert store.read_stream("ping-1")[0].metadata["traceparent"] == traceparent(append)


def test_a_failed_attempt_records_its_error(otel: Telemetry, store: EventStore) -> None:
    """A handler that raises fails its attempt's span with the exception; a command with no
    attempt left is counted as a dead letter."""

    def boom(command: Boom, ctx: CommandContext) -> None:
        raise RuntimeError("no luck")

    queue = CommandQueue(store)
    queue.enqueue(Boom())
    result = drain(queue, handlers={Boom: boom})
    assert result.died == 1
    span = otel.one("eventsource.command")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "RuntimeError: no luck"
    assert [e.name for e in span.events] == ["exception"]
    assert span.attributes is not None
    assert span.attributes["eventsource.command.outcome"] == "dead"
    recorded = otel.metrics()
    outcome = {"eventsource.queue": "telemetry", "eventsource.command.type": Boom.command_type}
    assert recorded["eventsource.command.attempts"] == [
        ({**outcome, "eventsource.command.outcome": "dead"}, 1)
    ]
    assert recorded["eventsource.command.dead_letters"] == [(outcome, 1)]


class APing(Command, name="test.telemetry.APing", queue="telemetry"):
    n: int


async def test_an_async_handler_on_the_applications_loop_runs_in_the_attempts_span(
    otel: Telemetry, async_store: AsyncEventStore
) -> None:
    """An ``async def`` handler run on the application's loop (``commands_running``) sees
    the attempt's span and correlation ids, as one on a worker thread does."""
    seen: list[tuple[trace.SpanContext, tuple[str | None, str | None]]] = []

    async def aping(command: APing, ctx: CommandContext) -> None:
        seen.append((trace.get_current_span().get_span_context(), current_correlation()))

    handlers = {APing.command_type: HandlerSpec(APing, aping, True, None)}
    with otel.tracer.start_as_current_span("request"):
        enqueued = await AsyncCommandQueue(async_store).enqueue(APing(n=1))
    async with commands_running(
        async_store, ["telemetry"], handlers=handlers, poll_interval=0.05
    ) as worker:
        for _ in range(500):
            if worker.processed:
                break
            await asyncio.sleep(0.02)
    handled = otel.one("eventsource.command")
    assert parent_of(handled) == otel.one("eventsource.enqueue").context.span_id
    ids = f"command:{enqueued.id}"
    assert seen == [(handled.context, (ids, ids))]


# -- projections and reactors --------------------------------------------------------------


class Refuses(Projection):
    """Refuses deposits of 13."""

    name = "test.telemetry.refuses"

    @handles(Deposited)
    def deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        if event.amount == 13:
            raise ValueError("13 is refused")


def test_batch_spans_and_a_failed_handler(otel: Telemetry, store: EventStore) -> None:
    """A batch's span names the projection, partition, positions and events, and links to the
    spans that appended them; a handler that raises gets a failed span; a stopped partition
    is counted."""
    with otel.tracer.start_as_current_span("request"):
        first = store.append("s-1", [Deposited(amount=1), Deposited(amount=2)], NO_STREAM)
    run_projections(store, [Refuses()])
    (batch,) = [s for s in otel.spans("eventsource.projection.batch") if s.attributes]
    assert batch.kind is SpanKind.CONSUMER
    assert batch.attributes == {
        "eventsource.projection": "test.telemetry.refuses",
        "eventsource.partition": first.partition,
        "eventsource.position.from": first.position - 1,
        "eventsource.position.to": first.position,
        "eventsource.event.count": 2,
    }
    assert ids(batch.links) == ids([otel.one("eventsource.append").context])

    otel.exporter.clear()
    otel.metrics()
    bad = store.append("s-1", [Deposited(amount=13)])
    run = run_projections(store, [Refuses()], check=False)
    assert [(s.partition, s.error_position) for s in run.stopped] == [(bad.partition, bad.position)]
    failed = otel.spans("eventsource.projection.handler")
    assert failed, "no span for the failed handler"
    span = failed[-1]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: 13 is refused"
    assert span.attributes == {
        "eventsource.projection": "test.telemetry.refuses",
        "eventsource.handler": "deposited",
        "eventsource.event.type": "test.Deposited",
        "eventsource.stream.id": "s-1",
        "eventsource.stream.version": 3,
        "eventsource.partition": bad.partition,
        "eventsource.position": bad.position,
    }
    batch = next(
        s
        for s in otel.spans("eventsource.projection.batch")
        if s.context.span_id == parent_of(span)
    )
    assert batch.status.status_code is StatusCode.ERROR
    stopped = [
        s
        for s in otel.spans("eventsource.projection.batch")
        if s.attributes and s.attributes.get("eventsource.partition.stopped")
    ]
    assert len(stopped) == 1
    recorded = otel.metrics()
    assert recorded["eventsource.projection.partitions.stopped"] == [
        ({"eventsource.projection": "test.telemetry.refuses"}, 1)
    ]


class Pings(Reactor):
    """A Ping per deposit."""

    name = "test.telemetry.pings"

    @handles(Deposited)
    def deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        self.enqueue(Ping(n=event.amount), tx)


def test_a_reactors_enqueue_links_to_the_event(otel: Telemetry, store: EventStore) -> None:
    """A reactor's enqueue span is a child of its batch's span and links to the span that
    appended the event; the command's attempt continues the enqueue's trace."""
    with otel.tracer.start_as_current_span("request"):
        store.append("s-1", [Deposited(amount=7)], NO_STREAM)
    run_projections(store, [Pings()])
    drain(CommandQueue(store), handlers={Ping: lambda command, ctx: None})
    append = otel.one("eventsource.append")
    enqueue = otel.one("eventsource.enqueue")
    batch = next(
        s
        for s in otel.spans("eventsource.projection.batch")
        if s.context.span_id == parent_of(enqueue)
    )
    assert ids(enqueue.links) == ids([append.context])
    assert ids(batch.links) == ids([append.context])
    handled = otel.one("eventsource.command")
    assert parent_of(handled) == enqueue.context.span_id
    assert handled.context.trace_id == batch.context.trace_id != append.context.trace_id


# -- metrics -------------------------------------------------------------------------------


def test_metrics(otel: Telemetry, store: EventStore) -> None:
    """Appended events are counted and appends timed; attempts are timed and counted by
    outcome; batches are timed."""
    store.append("s-1", [Opened(owner="ann"), Deposited(amount=1)], NO_STREAM)
    with store.transaction() as tx:
        store.append("s-2", [Opened(owner="bob")], NO_STREAM, tx=tx)
        store.append("s-3", [Opened(owner="cy")], NO_STREAM, tx=tx)
    store.append("s-1", [Deposited(amount=1)], 2)
    queue = CommandQueue(store)
    queue.enqueue_many([Ping(n=1), Ping(n=2)])
    drain(queue, handlers={Ping: lambda command, ctx: None})
    run_projections(store, [Refuses()])
    recorded = otel.metrics()
    assert recorded["eventsource.events.appended"] == [({}, 5)]
    assert recorded["eventsource.append.duration"] == [({}, 3)]
    succeeded = {
        "eventsource.queue": "telemetry",
        "eventsource.command.type": Ping.command_type,
        "eventsource.command.outcome": "succeeded",
    }
    assert recorded["eventsource.command.attempts"] == [(succeeded, 2)]
    assert recorded["eventsource.command.duration"] == [(succeeded, 2)]
    batches = recorded["eventsource.projection.batch.duration"]
    assert [attributes for attributes, _ in batches] == [
        {"eventsource.projection": "test.telemetry.refuses"}
    ]
    assert batches[0][1] >= 1
    assert "eventsource.command.dead_letters" not in recorded


# -- without an SDK ------------------------------------------------------------------------


NO_SDK = """
import sys
from eventsource import Command, CommandQueue, EventStore, NO_STREAM, Repository
from tests.domain import Counter, Opened

class Ping(Command, name="test.telemetry.Ping", queue="telemetry"):
    n: int

store = EventStore.from_url(sys.argv[1], schema=sys.argv[2], partitions=4)
store.upgrade()
store.append("s-1", [Opened(owner="ann")], NO_STREAM)
counter = Counter("c-1")
counter.open("bob")
Repository(store, Counter).save(counter)
with store.transaction() as tx:
    store.append("s-2", [Opened(owner="cy")], NO_STREAM, tx=tx)
CommandQueue(store).enqueue(Ping(n=1))
with store.engine.connect() as conn:
    traced = conn.exec_driver_sql(
        f"SELECT count(*) FROM {sys.argv[2]}.commands WHERE trace_context IS NOT NULL"
    ).scalar_one()
print([r.metadata for s in ("s-1", "c-1", "s-2") for r in store.read_stream(s)], traced)
print(sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))
store.close()
"""


def test_without_an_sdk_nothing_is_stored(database_url: str, schema: str) -> None:
    """In a process with no OpenTelemetry SDK, events and commands carry no trace context:
    stored rows are what they were before tracing existed."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-c", NO_SDK, database_url, schema],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[{}, {}, {}] 0", "[]"]


def test_spans_that_do_not_record_store_nothing(store: EventStore) -> None:
    """With an SDK whose sampler drops the spans, nothing is added either."""
    tracer: Any = installed().tracer
    with tracer.start_as_current_span("request"):
        store.append("s-1", [Opened(owner="ann")], NO_STREAM)
    assert store.read_stream("s-1")[0].metadata == {}


SERVE = """
import sys, urllib.request
from eventsource import EventStore, NO_STREAM
from eventsource.telemetry import serve_metrics
from tests.domain import Opened

serve_metrics(int(sys.argv[3]))
store = EventStore.from_url(sys.argv[1], schema=sys.argv[2], partitions=4)
store.upgrade()
store.append("s-1", [Opened(owner="ann")], NO_STREAM)
store.append("s-2", [Opened(owner="bob")], NO_STREAM)
page = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[3]}/metrics").read().decode()
print("\\n".join(line for line in page.splitlines() if line.startswith("eventsource_")))
store.close()
"""


def test_serve_metrics_for_prometheus(database_url: str, schema: str) -> None:
    """``serve_metrics`` serves the process's metrics in Prometheus's text format."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-c", SERVE, database_url, schema, str(port)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(
        line.startswith("eventsource_events_appended_total") and line.endswith(" 2.0")
        for line in lines
    ), lines
    assert any(line.startswith("eventsource_append_duration_seconds_count") for line in lines)
