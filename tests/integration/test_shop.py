"""The shop example (``examples/shop``) over HTTP, against a real store: httpx drives the ASGI
app with its lifespan, so the cart view, the reactor and the command worker run in-process."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from eventsource.fastapi import TOKEN_HEADER
from examples.shop.app import create_app


@pytest.fixture
async def client(database_url: str, schema: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the shop on a fresh schema (its view in ``<schema>_shop``), workers running."""
    app = create_app(database_url, schema=schema, read_schema_name=f"{schema}_shop")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            yield client


async def _new_cart(client: httpx.AsyncClient, customer: str = "ann") -> str:
    """Open a cart; its id."""
    opened = await client.post("/carts", json={"customer": customer})
    assert opened.status_code == 201, opened.text
    cart_id: str = opened.json()["cart_id"]
    return cart_id


async def _eventually(client: httpx.AsyncClient, cart_id: str, status: str) -> dict[str, Any]:
    """The cart's view once it has ``status`` (the workers move it there), within 20 s."""
    for _ in range(400):
        seen = await client.get(f"/carts/{cart_id}")
        assert seen.status_code == 200, seen.text
        if seen.json()["status"] == status:
            body: dict[str, Any] = seen.json()
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"cart {cart_id} never reached {status}: {seen.json()}")


async def test_a_read_with_the_writes_token_sees_the_write(client: httpx.AsyncClient) -> None:
    """Each write's token, sent back on the next GET, makes the view show that write."""
    cart_id = await _new_cart(client)
    for sku, quantity, price in (("tea", 2, 450), ("cup", 1, 1200), ("tea", 1, 450)):
        added = await client.post(
            f"/carts/{cart_id}/items", json={"sku": sku, "quantity": quantity, "price_cents": price}
        )
        assert added.status_code == 200, added.text
        token = added.headers[TOKEN_HEADER]
        seen = await client.get(f"/carts/{cart_id}", headers={TOKEN_HEADER: token})
        assert seen.status_code == 200, seen.text
        assert seen.json()["version"] == added.json()["version"]
    view = seen.json()
    assert view["lines"] == [
        {"sku": "cup", "quantity": 1, "price_cents": 1200},
        {"sku": "tea", "quantity": 3, "price_cents": 450},
    ]
    assert view["total_cents"] == 1200 + 3 * 450
    removed = await client.delete(f"/carts/{cart_id}/items/cup")
    seen = await client.get(
        f"/carts/{cart_id}", headers={TOKEN_HEADER: removed.headers[TOKEN_HEADER]}
    )
    assert seen.json()["total_cents"] == 3 * 450


async def test_checkout_charges_and_confirms_exactly_once(client: httpx.AsyncClient) -> None:
    """Checkout enqueues the charge with its event; the handler, the reactor and the second
    handler then take the cart to confirmed, each step recorded once."""
    cart_id = await _new_cart(client, "bob")
    await client.post(
        f"/carts/{cart_id}/items", json={"sku": "pot", "quantity": 2, "price_cents": 1999}
    )
    checked = await client.post(f"/carts/{cart_id}/checkout")
    assert checked.status_code == 202, checked.text
    order_id = checked.json()["order_id"]
    seen = await client.get(
        f"/carts/{cart_id}", headers={TOKEN_HEADER: checked.headers[TOKEN_HEADER]}
    )
    assert seen.json()["status"] in ("checked_out", "paid", "confirmed")
    view = await _eventually(client, cart_id, "confirmed")
    assert view["order_id"] == order_id
    events = (await client.get(f"/carts/{cart_id}/events")).json()
    types = [event["type"] for event in events]
    assert types == [
        "shop.CartOpened",
        "shop.ItemAdded",
        "shop.CheckedOut",
        "shop.PaymentCaptured",
        "shop.ConfirmationSent",
    ]
    assert events[3]["data"] == {"order_id": order_id, "amount_cents": 2 * 1999}
    assert events[4]["data"]["email"] == "bob@example.com"


async def test_twenty_concurrent_adds_all_succeed(client: httpx.AsyncClient) -> None:
    """Adds to one cart retry on a conflict: twenty at once are twenty 200s and twenty items."""
    cart_id = await _new_cart(client)
    answers = await asyncio.gather(
        *(
            client.post(
                f"/carts/{cart_id}/items", json={"sku": "pen", "quantity": 1, "price_cents": 99}
            )
            for _ in range(20)
        )
    )
    assert [answer.status_code for answer in answers] == [200] * 20
    newest = max(answers, key=lambda answer: answer.json()["version"])
    seen = await client.get(
        f"/carts/{cart_id}", headers={TOKEN_HEADER: newest.headers[TOKEN_HEADER]}
    )
    assert seen.json()["lines"] == [{"sku": "pen", "quantity": 20, "price_cents": 99}]


async def test_bad_requests_are_problems_and_write_nothing(client: httpx.AsyncClient) -> None:
    """Unknown carts are 404, invalid bodies and rules 422, a closed cart 409, bad tokens 422."""
    missing = await client.post(
        "/carts/nope/items", json={"sku": "a", "quantity": 1, "price_cents": 1}
    )
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert (await client.get("/carts/nope")).status_code == 404
    assert (await client.get("/carts/nope/events")).status_code == 404
    cart_id = await _new_cart(client)
    for body in (
        {"sku": "a", "quantity": 0, "price_cents": 1},
        {"sku": "no spaces", "quantity": 1, "price_cents": 1},
        {"sku": "a", "quantity": 1, "price_cents": -1},
        {"sku": "a", "quantity": "many", "price_cents": 1},
    ):
        rejected = await client.post(f"/carts/{cart_id}/items", json=body)
        assert rejected.status_code == 422, (body, rejected.text)
    empty = await client.post(f"/carts/{cart_id}/checkout")
    assert empty.status_code == 422
    assert "is empty" in empty.json()["detail"]
    assert (await client.post("/carts", json={"customer": ""})).status_code == 422
    await client.post(f"/carts/{cart_id}/items", json={"sku": "a", "quantity": 1, "price_cents": 5})
    assert (await client.post(f"/carts/{cart_id}/checkout")).status_code == 202
    closed = await client.post(
        f"/carts/{cart_id}/items", json={"sku": "b", "quantity": 1, "price_cents": 5}
    )
    assert closed.status_code == 409
    detail = closed.json()["detail"]
    assert re.search(r"is (checked out|paid|confirmed): it cannot change", detail), detail
    events = (await client.get(f"/carts/{cart_id}/events")).json()
    assert [e["type"] for e in events][:3] == [
        "shop.CartOpened",
        "shop.ItemAdded",
        "shop.CheckedOut",
    ]
    for token in ("garbage", "p1:other_schema:0:1"):
        bad = await client.get(f"/carts/{cart_id}", headers={TOKEN_HEADER: token})
        assert bad.status_code == 422, (token, bad.text)
