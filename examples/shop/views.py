"""``CartView``: each cart's lines, total and status, kept by a projection, read by the API.

The tables live in the schema named by ``SHOP_READ_SCHEMA`` (default ``shop_read``). Run the
projection in the application (``create_app(workers=True)``) or as a worker process::

    eventsource projections run examples.shop.views:CartView examples.shop.payments:Confirmations
"""

from __future__ import annotations

import os

from pydantic import BaseModel
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from eventsource import AsyncEventStore, RecordedEvent
from projections import Projection, handles

from .domain import (
    CartOpened,
    CheckedOut,
    ConfirmationSent,
    ItemAdded,
    ItemRemoved,
    PaymentCaptured,
)


def read_schema() -> str:
    """The read model's schema: ``SHOP_READ_SCHEMA``, else ``shop_read``."""
    return os.environ.get("SHOP_READ_SCHEMA", "shop_read")


def _quoted(tx: Connection | AsyncConnection, schema: str) -> str:
    """``schema`` quoted as an identifier for this connection's dialect (never raw SQL)."""
    return tx.dialect.identifier_preparer.quote_schema(schema)


class Line(BaseModel):
    """One SKU of a cart, as the API shows it."""

    sku: str
    quantity: int
    price_cents: int


class CartOut(BaseModel):
    """A cart as the API shows it: read from the view, so as fresh as the projection."""

    cart_id: str
    customer: str
    status: str
    total_cents: int
    order_id: str | None
    lines: list[Line]
    version: int  # the cart's stream version the view has applied


class CartView(Projection):
    """Carts with their lines and totals, queryable with plain SQL."""

    name = "shop.carts"

    def __init__(self, schema: str | None = None) -> None:
        self.schema_name = schema or read_schema()

    def setup(self, tx: Connection) -> None:
        """Create the tables (idempotent; the API and the workers may run it at once)."""
        s = _quoted(tx, self.schema_name)
        tx.execute(text("SELECT pg_advisory_xact_lock(hashtext('examples.shop.views'))"))
        tx.execute(text(f"CREATE SCHEMA IF NOT EXISTS {s}"))
        tx.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {s}.carts (cart_id text PRIMARY KEY,"
                " customer text NOT NULL, status text NOT NULL, order_id text,"
                " total_cents bigint NOT NULL DEFAULT 0, version bigint NOT NULL)"
            )
        )
        tx.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {s}.cart_lines (cart_id text NOT NULL,"
                " sku text NOT NULL, quantity integer NOT NULL, price_cents bigint NOT NULL,"
                " PRIMARY KEY (cart_id, sku))"
            )
        )

    def reset(self, tx: Connection) -> None:
        s = _quoted(tx, self.schema_name)
        tx.execute(text(f"TRUNCATE {s}.carts, {s}.cart_lines"))

    @handles(CartOpened)
    def opened(self, event: CartOpened, record: RecordedEvent, tx: Connection) -> None:
        tx.execute(
            text(
                f"INSERT INTO {_quoted(tx, self.schema_name)}.carts"
                " (cart_id, customer, status, version) VALUES (:id, :customer, 'open', :v)"
            ),
            {"id": record.stream_id, "customer": event.customer, "v": record.stream_version},
        )

    @handles(ItemAdded)
    def added(self, event: ItemAdded, record: RecordedEvent, tx: Connection) -> None:
        s = _quoted(tx, self.schema_name)
        tx.execute(
            text(
                f"INSERT INTO {s}.cart_lines (cart_id, sku, quantity, price_cents)"
                " VALUES (:id, :sku, :quantity, :price) ON CONFLICT (cart_id, sku) DO UPDATE"
                " SET quantity = cart_lines.quantity + :quantity, price_cents = :price"
            ),
            {
                "id": record.stream_id,
                "sku": event.sku,
                "quantity": event.quantity,
                "price": event.price_cents,
            },
        )
        self._total(tx, record)

    @handles(ItemRemoved)
    def removed(self, event: ItemRemoved, record: RecordedEvent, tx: Connection) -> None:
        s = _quoted(tx, self.schema_name)
        tx.execute(
            text(f"DELETE FROM {s}.cart_lines WHERE cart_id = :id AND sku = :sku"),
            {"id": record.stream_id, "sku": event.sku},
        )
        self._total(tx, record)

    @handles(CheckedOut)
    def checked_out(self, event: CheckedOut, record: RecordedEvent, tx: Connection) -> None:
        self._status(tx, record, "checked_out", event.order_id)

    @handles(PaymentCaptured)
    def paid(self, event: PaymentCaptured, record: RecordedEvent, tx: Connection) -> None:
        self._status(tx, record, "paid", event.order_id)

    @handles(ConfirmationSent)
    def confirmed(self, event: ConfirmationSent, record: RecordedEvent, tx: Connection) -> None:
        self._status(tx, record, "confirmed", event.order_id)

    def _total(self, tx: Connection, record: RecordedEvent) -> None:
        """Recompute the cart's total from its lines, at the event's version."""
        s = _quoted(tx, self.schema_name)
        tx.execute(
            text(
                f"UPDATE {s}.carts SET version = :v, total_cents = (SELECT"
                f" coalesce(sum(quantity * price_cents), 0) FROM {s}.cart_lines"
                " WHERE cart_id = :id) WHERE cart_id = :id"
            ),
            {"id": record.stream_id, "v": record.stream_version},
        )

    def _status(self, tx: Connection, record: RecordedEvent, status: str, order_id: str) -> None:
        tx.execute(
            text(
                f"UPDATE {_quoted(tx, self.schema_name)}.carts SET status = :status,"
                " order_id = :order, version = :v WHERE cart_id = :id"
            ),
            {
                "id": record.stream_id,
                "status": status,
                "order": order_id,
                "v": record.stream_version,
            },
        )


async def find_cart(store: AsyncEventStore, schema: str, cart_id: str) -> CartOut | None:
    """The view's cart ``cart_id`` (None when the view has no such cart)."""
    async with store.transaction() as tx:
        s = _quoted(await tx.begin(), schema)
        found = await tx.execute(
            text(
                "SELECT cart_id, customer, status, order_id, total_cents, version"
                f" FROM {s}.carts WHERE cart_id = :id"
            ),
            {"id": cart_id},
        )
        cart = found.mappings().first()
        if cart is None:
            return None
        lines = await tx.execute(
            text(
                f"SELECT sku, quantity, price_cents FROM {s}.cart_lines WHERE cart_id = :id"
                " ORDER BY sku"
            ),
            {"id": cart_id},
        )
        return CartOut.model_validate({**cart, "lines": [dict(row) for row in lines.mappings()]})
