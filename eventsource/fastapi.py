"""FastAPI integration: the store's lifespan, dependencies, error responses and event JSON.

Install with the ``fastapi`` extra. A service wires it up once::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from eventsource import AsyncRepository
    from eventsource.fastapi import EventSourcing

    es = EventSourcing(schema="shop")              # EVENTSOURCE_* settings, else embedded
    app = FastAPI(lifespan=es.lifespan)            # opens (and upgrades) the store, closes it
    es.install(app)                                # our errors as application/problem+json

    Carts = Annotated[AsyncRepository[Cart], Depends(es.repository(Cart))]

    @app.post("/carts/{cart_id}/items")
    async def add(cart_id: str, item: Item, carts: Carts, response: Response) -> dict:
        result = await carts.update(cart_id, lambda cart: cart.add(item), retries=5)
        es.set_token(response, result)             # for read-your-writes on the next read
        ...

    @app.get("/carts/{cart_id}", dependencies=[Depends(es.consistent("cart-view"))])
    async def view(cart_id: str) -> dict: ...      # waits for the caller's token, if any

Errors become responses with a JSON problem body (RFC 9457: type, title, status, detail and
the error's fields): ``ConcurrencyError`` and ``DuplicateEventId`` 409, ``AggregateNotFound``
and ``CommandNotFound`` 404, an invalid value (``ValueRejected``, ``PositionTokenError``, a
pydantic ``ValidationError`` raised while building an event or command) 422,
``ProjectionTimeout`` 504, ``DatabaseUnavailable`` and other retryable errors 503 with
``Retry-After``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from eventsource._aggregate import Aggregate
from eventsource._errors import (
    AggregateNotFound,
    CommandNotFound,
    ConcurrencyError,
    DatabaseUnavailable,
    DuplicateEventId,
    EventSourceError,
    ProjectionTimeout,
    RetryableError,
    ValueRejected,
)
from eventsource.commands import AsyncCommandQueue, commands_running
from eventsource.store import (
    AppendResult,
    AsyncEventStore,
    AsyncRepository,
    PendingAppend,
    PositionTokenError,
    RecordedEvent,
)

__all__ = ["TOKEN_HEADER", "EventOut", "EventSourcing", "event_out", "problem"]

A = TypeVar("A", bound=Aggregate)

TOKEN_HEADER = "X-Position-Token"  # a write's position token, handed back by the next read

# (error class, status, title), most specific first.
_STATUSES: list[tuple[type[Exception], int, str]] = [
    (ConcurrencyError, 409, "Conflict"),
    (DuplicateEventId, 409, "Conflict"),
    (AggregateNotFound, 404, "Not Found"),
    (CommandNotFound, 404, "Not Found"),
    (PositionTokenError, 422, "Unprocessable Content"),
    (ValueRejected, 422, "Unprocessable Content"),
    (ValidationError, 422, "Unprocessable Content"),
    (ProjectionTimeout, 504, "Gateway Timeout"),
    (DatabaseUnavailable, 503, "Service Unavailable"),
    (RetryableError, 503, "Service Unavailable"),
]


class EventOut(BaseModel):
    """A stored event as JSON, with its type name: clients of a history endpoint that mixes
    several event types can tell them apart."""

    type: str
    schema_version: int
    event_id: str
    stream_id: str
    stream_version: int
    partition: int
    position: int
    recorded_at: datetime
    data: dict[str, Any]
    metadata: dict[str, Any]


def event_out(record: RecordedEvent) -> EventOut:
    """The JSON model of a stored event (its payload as stored, upcasters not applied)."""
    return EventOut(
        type=record.event_type,
        schema_version=record.schema_version,
        event_id=str(record.event_id),
        stream_id=record.stream_id,
        stream_version=record.stream_version,
        partition=record.partition,
        position=record.position,
        recorded_at=record.recorded_at,
        data=record.data,
        metadata=record.metadata,
    )


def problem(exc: BaseException) -> JSONResponse | None:
    """The problem response for one of the framework's errors (None for any other error)."""
    found = next((entry for entry in _STATUSES if isinstance(exc, entry[0])), None)
    if found is None:
        return None
    _, status, title = found
    if isinstance(exc, ValidationError):
        detail = f"invalid {exc.title}: {exc.error_count()} error(s)"
        extra: dict[str, Any] = {
            "errors": json.loads(exc.json(include_url=False, include_input=False))
        }
    else:
        detail = str(exc)
        extra = _fields(exc)
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status, headers, media_type="application/problem+json")


def _fields(exc: BaseException) -> dict[str, Any]:
    """The structured fields of an error, as JSON values (``error`` names its class)."""
    fields: dict[str, Any] = {"error": type(exc).__name__}
    if dataclasses.is_dataclass(exc):
        for field in dataclasses.fields(exc):
            value = getattr(exc, field.name)
            fields[field.name] = value if isinstance(value, int | str | None) else str(value)
    return fields


class EventSourcing:
    """The store of a FastAPI application, and the dependencies and handlers around it.

    ``url``, ``schema``, ``partitions``, ``pool_size``: as ``AsyncEventStore.from_url`` (the
    ``EVENTSOURCE_*`` settings for what is not given). ``upgrade``: create or upgrade the
    schema at start-up. ``projections``: run these projections in the application's event
    loop while it serves (``projections.running``). ``command_queues``: run a command worker
    for these queues meanwhile (``commands_running``, with ``command_concurrency`` slots), over
    the handlers registered when the application starts. Separate worker processes remain the
    recommended set-up in production.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str | None = None,
        partitions: int | None = None,
        pool_size: int | None = None,
        upgrade: bool = True,
        projections: Sequence[Any] = (),
        command_queues: Sequence[str] = (),
        command_concurrency: int = 4,
    ) -> None:
        """Keep the settings; nothing connects before the application starts."""
        options = {"schema": schema, "partitions": partitions, "pool_size": pool_size}
        self._options: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        self._url = url
        self._upgrade = upgrade
        self._projections = list(projections)
        if isinstance(command_queues, str):
            raise TypeError(
                f"command_queues must be a list of queue names, got the string {command_queues!r}"
            )
        self._command_queues = list(command_queues)
        self._command_concurrency = command_concurrency
        self._store: AsyncEventStore | None = None

    @property
    def store(self) -> AsyncEventStore:
        """The application's store (an error outside the lifespan)."""
        if self._store is None:
            raise EventSourceError(
                "the store is open only while the application runs: pass"
                " `lifespan=es.lifespan` to FastAPI(...)"
            )
        return self._store

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Open (and upgrade) the store for the application's life, then close it."""
        store = AsyncEventStore.from_url(self._url, **self._options)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(store.close)
            if self._upgrade:
                await store.upgrade()
            else:
                await store.partition_count()
            if self._projections:
                import projections  # noqa: PLC0415 - only applications that run them need it

                await stack.enter_async_context(projections.running(store, self._projections))
            if self._command_queues:
                await stack.enter_async_context(
                    commands_running(
                        store, self._command_queues, concurrency=self._command_concurrency
                    )
                )
            self._store = store
            app.state.eventsource = store
            try:
                yield
            finally:
                self._store = None

    def install(self, app: FastAPI) -> None:
        """Answer the framework's errors with problem responses (see the module docstring)."""

        async def handle(request: Request, exc: Exception) -> Response:
            response = problem(exc)
            if response is None:
                raise exc
            return response

        for kind, _, _ in _STATUSES:
            app.add_exception_handler(kind, handle)

    def get_store(self) -> AsyncEventStore:
        """A dependency: the application's store."""
        return self.store

    def repository(
        self, aggregate_type: type[A], *, snapshot_every: int | None = None
    ) -> Callable[[], AsyncRepository[A]]:
        """A dependency giving an ``AsyncRepository`` of ``aggregate_type`` on the store."""

        def dependency() -> AsyncRepository[A]:
            return AsyncRepository(self.store, aggregate_type, snapshot_every=snapshot_every)

        return dependency

    def queue(self) -> Callable[[], AsyncCommandQueue]:
        """A dependency giving the store's ``AsyncCommandQueue``."""

        def dependency() -> AsyncCommandQueue:
            return AsyncCommandQueue(self.store)

        return dependency

    @staticmethod
    def set_token(response: Response, result: AppendResult | PendingAppend | None) -> None:
        """Hand a write's position token to the client (header ``X-Position-Token``)."""
        if result is not None:
            response.headers[TOKEN_HEADER] = result.token

    def consistent(
        self, projection: str, *, timeout: float = 5.0
    ) -> Callable[[Request], Awaitable[None]]:
        """A dependency that waits, before the endpoint reads, until ``projection`` has applied
        the write whose token the request carries (``X-Position-Token``); no token, no wait.
        A malformed token is a 422, a wait that times out a 504."""
        from projections import wait_for_async  # noqa: PLC0415 - projections imports eventsource

        async def dependency(request: Request) -> None:
            token = request.headers.get(TOKEN_HEADER)
            if token:
                await wait_for_async(self.store, projection, token, timeout=timeout)

        return dependency
