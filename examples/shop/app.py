"""The shop's HTTP API: carts as event-sourced aggregates behind an async FastAPI app.

    POST   /carts                      {"customer": "ann"}             -> 201 {"cart_id": ...}
    POST   /carts/{id}/items           {"sku", "quantity", "price_cents"}
    DELETE /carts/{id}/items/{sku}
    POST   /carts/{id}/checkout                                        -> 202 {"order_id": ...}
    GET    /carts/{id}                 the view (waits for the caller's X-Position-Token)
    GET    /carts/{id}/events          the cart's events, with their type names

Every write answers with an ``X-Position-Token`` header; a read that sends it back sees that
write (read-your-writes across requests, whichever replica serves them). Adds retry on a
conflict; a checkout that races another change of the cart is a 409 (the client looks again).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run
# time, and the dependency aliases are local to create_app.
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from eventsource import AggregateNotFound, AsyncCommandQueue, AsyncEventStore, AsyncRepository
from eventsource.fastapi import EventOut, EventSourcing, event_out

from .domain import MAX_QUANTITY, Cart, CartClosed
from .payments import QUEUE, ChargePayment, Confirmations
from .views import CartOut, CartView, find_cart, read_schema

SKU = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")


class NewCart(BaseModel):
    """The body of ``POST /carts``."""

    customer: str = Field(min_length=1, max_length=100)


class NewItem(BaseModel):
    """The body of ``POST /carts/{id}/items``."""

    sku: str = SKU
    quantity: int = Field(ge=1, le=MAX_QUANTITY)
    price_cents: int = Field(ge=0, le=100_000_000)


class Created(BaseModel):
    """A new cart's id."""

    cart_id: str


class Changed(BaseModel):
    """A changed cart's stream version (None when the change recorded nothing)."""

    version: int | None


class Ordered(BaseModel):
    """A checked-out cart's order id."""

    order_id: str


def create_app(
    url: str | None = None,
    *,
    schema: str | None = None,
    read_schema_name: str | None = None,
    workers: bool = True,
) -> FastAPI:
    """The shop's application on the store at ``url`` (``EVENTSOURCE_*`` settings, else the
    embedded server). With ``workers``, the cart view, the reactor and the command worker run
    inside the application; without, run them as processes (see the package's README)."""
    views = read_schema_name or read_schema()
    background = [CartView(views), Confirmations()] if workers else []
    es = EventSourcing(
        url, schema=schema, projections=background, command_queues=[QUEUE] if workers else []
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with es.lifespan(app):
            async with es.store.transaction() as tx:  # the view's tables, for the first GET
                await (await tx.begin()).run_sync(CartView(views).setup)
            yield

    app = FastAPI(title="shop", lifespan=lifespan)
    es.install(app)
    app.add_exception_handler(CartClosed, _rejected(409, "Conflict"))
    app.add_exception_handler(ValueError, _rejected(422, "Unprocessable Content"))

    Carts = Annotated[AsyncRepository[Cart], Depends(es.repository(Cart))]
    Store = Annotated[AsyncEventStore, Depends(es.get_store)]
    Queue = Annotated[AsyncCommandQueue, Depends(es.queue())]

    @app.post("/carts", status_code=201)
    async def open_cart(body: NewCart, carts: Carts, response: Response) -> Created:
        cart = Cart(uuid.uuid4().hex)
        cart.open(body.customer)
        es.set_token(response, await carts.save(cart))
        return Created(cart_id=cart.id)

    @app.post("/carts/{cart_id}/items")
    async def add_item(cart_id: str, body: NewItem, carts: Carts, response: Response) -> Changed:
        result = await carts.update(
            cart_id, lambda cart: cart.add(body.sku, body.quantity, body.price_cents), retries=10
        )
        es.set_token(response, result)
        return Changed(version=result.stream_version if result else None)

    @app.delete("/carts/{cart_id}/items/{sku}")
    async def remove_item(cart_id: str, sku: str, carts: Carts, response: Response) -> Changed:
        result = await carts.update(cart_id, lambda cart: cart.remove(sku), retries=10)
        es.set_token(response, result)
        return Changed(version=result.stream_version if result else None)

    @app.post("/carts/{cart_id}/checkout", status_code=202)
    async def check_out(
        cart_id: str, carts: Carts, queue: Queue, store: Store, response: Response
    ) -> Ordered:
        cart = await carts.load(cart_id)
        order_id = uuid.uuid4().hex
        cart.check_out(order_id)
        charge = ChargePayment(cart_id=cart_id, order_id=order_id, amount_cents=cart.total_cents)
        async with store.transaction() as tx:  # the checkout and its charge, or neither
            saved = await carts.save(cart, tx=tx)
            await queue.enqueue(charge, tx=tx, ordering_key=cart_id)
        es.set_token(response, saved)
        return Ordered(order_id=order_id)

    @app.get("/carts/{cart_id}", dependencies=[Depends(es.consistent(CartView.name))])
    async def view_cart(cart_id: str, store: Store) -> CartOut:
        found = await find_cart(store, views, cart_id)
        if found is None:
            raise AggregateNotFound(Cart.aggregate_type, cart_id)
        return found

    @app.get("/carts/{cart_id}/events")
    async def cart_events(cart_id: str, store: Store) -> list[EventOut]:
        records = await store.read_stream(cart_id)
        if not records:
            raise AggregateNotFound(Cart.aggregate_type, cart_id)
        return [event_out(record) for record in records]

    return app


def _rejected(status: int, title: str) -> Callable[[Request, Exception], Awaitable[Response]]:
    """An exception handler answering a domain rule's error with a problem body."""

    async def handle(request: Request, exc: Exception) -> Response:
        body = {"type": "about:blank", "title": title, "status": status, "detail": str(exc)}
        return JSONResponse(body, status, media_type="application/problem+json")

    return handle


app = create_app()  # `uvicorn examples.shop.app:app`: settings from EVENTSOURCE_* variables
