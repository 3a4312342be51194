"""The pages: overview, projections, command queue, and the stream and partition viewer.

Pages are plain functions of a request, rendered on the server from a ``Snapshot`` (or, for
the viewer, from events looked up by primary key or by stream). A query parameter out of range
is answered 422, an unknown projection, partition, command or stream 404.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eventsource._checks import BIGINT_MAX, check_name
from eventsource.commands import CommandQueue
from eventsource.db import fetch
from eventsource.ops._app import OpsState, error_page, path_int, render
from eventsource.ops._queries import ops_queries
from eventsource.ops._snapshot import read_snapshot
from eventsource.store import Queries

__all__ = ["MAX_ROWS", "BadQuery", "EventRow", "page_routes", "query_int"]

MAX_ROWS = 1000  # the most events or dead letters one page lists


class BadQuery(ValueError):
    """A query parameter that is malformed or out of range (answered 422)."""


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """The integer query parameter ``name`` (``default`` if absent) from ``low`` to ``high``."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise BadQuery(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise BadQuery(f"{name} must be from {low} to {high}, got {value}")
    return value


def query_name(request: Request, name: str) -> str | None:
    """The name-like query parameter ``name`` (a queue, a stream id), if given."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return check_name(raw, name)
    except ValueError as exc:
        raise BadQuery(str(exc)) from None


@dataclass(frozen=True)
class EventRow:
    """A stored event as the viewer shows it: its JSON pretty-printed, not decoded to a model."""

    event_id: str
    stream_id: str
    stream_version: int
    partition: int
    position: int
    event_type: str
    schema_version: int
    data: str
    metadata: str
    recorded_at: datetime

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> EventRow:
        """An ``EventRow`` from a raw event row (data and metadata as JSON text)."""
        values = list(row)
        for i in (7, 8):
            values[i] = json.dumps(json.loads(values[i]), indent=2, ensure_ascii=False)
        return cls(*values)


class _Pages:
    """The page endpoints of one app."""

    def __init__(self, state: OpsState) -> None:
        self.state = state

    def _safely(self, request: Request, page: Any) -> Response:
        """Run ``page``; a bad query parameter becomes a 422 page."""
        try:
            response: Response = page()
        except BadQuery as exc:
            return error_page(self.state, request, 422, str(exc))
        return response

    def overview(self, request: Request) -> Response:
        """Append rate, total lag, queue depth, dead letters, live workers."""
        snapshot = read_snapshot(self.state.store)
        return render(self.state, request, "overview.html", {"s": snapshot, "page": "overview"})

    def projections(self, request: Request) -> Response:
        """Every projection's partitions: position, head, lag, owner, error, actions."""
        return self._projections(request, None)

    def projection(self, request: Request) -> Response:
        """One projection's partitions (404 for a projection without checkpoints)."""
        return self._projections(request, request.path_params["name"])

    def _projections(self, request: Request, only: str | None) -> Response:
        snapshot = read_snapshot(self.state.store)
        names = snapshot.projection_names()
        if only is not None and only not in names:
            return error_page(self.state, request, 404, f"no projection named {only!r}")
        shown = [only] if only is not None else names
        context = {
            "s": snapshot,
            "page": "projections",
            "names": shown,
            "rows": {n: [c for c in snapshot.checkpoints if c.projection == n] for n in shown},
            "replays": self.state.replays,
        }
        return render(self.state, request, "projections.html", context)

    def commands(self, request: Request) -> Response:
        """Depth by queue and state, the oldest due command, dead letters with tracebacks."""

        def page() -> Response:
            queue = query_name(request, "queue")
            limit = query_int(request, "limit", 50, 1, MAX_ROWS)
            snapshot = read_snapshot(self.state.store)
            dead = CommandQueue(self.state.store).dead(queue=queue, limit=limit)
            context = {"s": snapshot, "page": "commands", "dead": dead, "queue": queue}
            return render(self.state, request, "commands.html", context)

        return self._safely(request, page)

    def command(self, request: Request) -> Response:
        """One command with its payload, error and traceback (404 once done or unknown)."""
        command_id = path_int(request, "command_id", 1, BIGINT_MAX)
        info = None
        if command_id is not None:
            info = CommandQueue(self.state.store).get(command_id)
        if info is None:
            message = f"no command {request.path_params['command_id']!r} (done ones are deleted)"
            return error_page(self.state, request, 404, message)
        payload = json.dumps(json.loads(info.payload), indent=2, ensure_ascii=False)
        context = {"c": info, "payload": payload, "page": "commands"}
        return render(self.state, request, "command.html", context)

    def streams(self, request: Request) -> Response:
        """The viewer: a stream's events (``?stream=ID``), or a form to choose one."""

        def page() -> Response:
            if request.query_params.get("partition"):
                last = self.state.store.partitions - 1
                partition = query_int(request, "partition", 0, 0, last)
                return self._partition_page(request, partition)
            stream = query_name(request, "stream")
            after = query_int(request, "after", 0, 0, BIGINT_MAX)
            limit = query_int(request, "limit", 100, 1, MAX_ROWS)
            events: list[EventRow] = []
            if stream is not None:
                params = {"stream_id": stream, "after": after, "limit": limit}
                sql = ops_queries(self.state.store.schema).read_stream_page
                with self.state.store._raw() as conn:
                    rows = fetch(conn, sql, params)
                events = [EventRow.from_row(r) for r in rows]
                if not events and after == 0:
                    return error_page(self.state, request, 404, f"no stream {stream!r}")
            context = {
                "page": "streams",
                "stream": stream,
                "events": events,
                "after": after,
                "limit": limit,
                "next_after": events[-1].stream_version if len(events) == limit else None,
                "partitions": self.state.store.partitions,
            }
            return render(self.state, request, "events.html", context)

        return self._safely(request, page)

    def partition(self, request: Request) -> Response:
        """A partition's events from a position on (``?after=N&limit=M``)."""
        store = self.state.store
        partition = path_int(request, "partition", 0, store.partitions - 1)
        if partition is None:
            message = (
                f"no partition {request.path_params['partition']!r}:"
                f" this log has partitions 0..{store.partitions - 1}"
            )
            return error_page(self.state, request, 404, message)
        return self._safely(request, lambda: self._partition_page(request, partition))

    def _partition_page(self, request: Request, partition: int) -> Response:
        """The events of ``partition`` after ``?after`` (at most ``?limit``)."""
        store = self.state.store
        after = query_int(request, "after", 0, 0, BIGINT_MAX)
        limit = query_int(request, "limit", 100, 1, MAX_ROWS)
        params = {"partition": partition, "after": after, "limit": limit}
        with store._raw() as conn:
            rows = fetch(conn, Queries.for_schema(store.schema).read_partition, params)
        events = [EventRow.from_row(r) for r in rows]
        context = {
            "page": "streams",
            "stream": None,
            "partition": partition,
            "events": events,
            "after": after,
            "limit": limit,
            "next_after": events[-1].position if len(events) == limit else None,
            "partitions": store.partitions,
        }
        return render(self.state, request, "events.html", context)


def page_routes(state: OpsState) -> list[Route]:
    """The routes of the pages."""
    pages = _Pages(state)
    return [
        Route("/", pages.overview),
        Route("/projections", pages.projections),
        Route("/projections/{name}", pages.projection),
        Route("/commands", pages.commands),
        Route("/commands/{command_id}", pages.command),
        Route("/streams", pages.streams),
        Route("/partitions/{partition}", pages.partition),
    ]
