"""The cart's events and its aggregate. Domain code: no database or web imports here.

A cart is opened for a customer, takes items (a quantity of a SKU at a unit price in integer
cents), is checked out into an order, has the order's payment captured, and finally has its
confirmation sent. Each step is an event; ``Cart.apply`` is the only place state changes.
"""

from __future__ import annotations

from eventsource import Aggregate, Event

MAX_QUANTITY = 1_000  # of one SKU in one cart


class CartOpened(Event, name="shop.CartOpened"):
    customer: str


class ItemAdded(Event, name="shop.ItemAdded"):
    sku: str
    quantity: int
    price_cents: int


class ItemRemoved(Event, name="shop.ItemRemoved"):
    sku: str


class CheckedOut(Event, name="shop.CheckedOut"):
    order_id: str
    total_cents: int


class PaymentCaptured(Event, name="shop.PaymentCaptured"):
    order_id: str
    amount_cents: int


class ConfirmationSent(Event, name="shop.ConfirmationSent"):
    order_id: str
    email: str


class CartClosed(Exception):
    """The cart was checked out: it takes no more changes."""

    def __init__(self, cart_id: str, status: str) -> None:
        self.cart_id = cart_id
        self.status = status
        super().__init__(f"cart {cart_id} is {status.replace('_', ' ')}: it cannot change")


class Cart(Aggregate, name="shop.Cart"):
    """A customer's cart: open, then checked out, paid and confirmed, in that order."""

    customer: str = ""
    status: str = "new"  # new, open, checked_out, paid, confirmed
    quantities: dict[str, int] = {}  # each cart gets its own copy
    prices: dict[str, int] = {}  # each cart gets its own copy
    order_id: str = ""

    @property
    def total_cents(self) -> int:
        """What the cart's items cost together."""
        return sum(quantity * self.prices[sku] for sku, quantity in self.quantities.items())

    def open(self, customer: str) -> None:
        if self.status != "new":
            raise CartClosed(self.id, self.status)
        if not customer.strip():
            raise ValueError("customer must not be empty")
        self.record(CartOpened(customer=customer))

    def add(self, sku: str, quantity: int, price_cents: int) -> None:
        self._check_open()
        if quantity < 1:
            raise ValueError(f"quantity must be at least 1, got {quantity}")
        if self.quantities.get(sku, 0) + quantity > MAX_QUANTITY:
            raise ValueError(f"a cart holds at most {MAX_QUANTITY} of {sku!r}")
        if price_cents < 0:
            raise ValueError(f"price must not be negative, got {price_cents}")
        self.record(ItemAdded(sku=sku, quantity=quantity, price_cents=price_cents))

    def remove(self, sku: str) -> None:
        self._check_open()
        if sku in self.quantities:
            self.record(ItemRemoved(sku=sku))

    def check_out(self, order_id: str) -> None:
        self._check_open()
        if not self.quantities:
            raise ValueError(f"cart {self.id} is empty: nothing to check out")
        self.record(CheckedOut(order_id=order_id, total_cents=self.total_cents))

    def capture(self, order_id: str, amount_cents: int) -> None:
        """Record the order's payment; a repeated capture of the same order records nothing."""
        if self.status in ("paid", "confirmed") and order_id == self.order_id:
            return
        if self.status != "checked_out" or order_id != self.order_id:
            raise ValueError(f"cart {self.id} has no order {order_id!r} awaiting payment")
        self.record(PaymentCaptured(order_id=order_id, amount_cents=amount_cents))

    def confirm(self, order_id: str, email: str) -> None:
        """Record that the customer was told; a repeated confirmation records nothing."""
        if self.status == "confirmed":
            return
        if self.status != "paid" or order_id != self.order_id:
            raise ValueError(f"cart {self.id} has no paid order {order_id!r} to confirm")
        self.record(ConfirmationSent(order_id=order_id, email=email))

    def apply(self, event: Event) -> None:
        match event:
            case CartOpened():
                self.customer = event.customer
                self.status = "open"
            case ItemAdded():
                self.quantities[event.sku] = self.quantities.get(event.sku, 0) + event.quantity
                self.prices[event.sku] = event.price_cents
            case ItemRemoved():
                self.quantities.pop(event.sku, None)
                self.prices.pop(event.sku, None)
            case CheckedOut():
                self.order_id = event.order_id
                self.status = "checked_out"
            case PaymentCaptured():
                self.status = "paid"
            case ConfirmationSent():
                self.status = "confirmed"

    def _check_open(self) -> None:
        if self.status == "new":
            raise ValueError(f"cart {self.id} is not open")
        if self.status != "open":
            raise CartClosed(self.id, self.status)
