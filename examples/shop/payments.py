"""Payment and confirmation: a command enqueued with the checkout, and a reactor.

``ChargePayment`` is enqueued in the checkout's transaction: the ``CheckedOut`` event and the
command commit together, or neither. Its handler records ``PaymentCaptured`` on the cart
through ``ctx.tx``, so the event commits with the command's ack: exactly once, although
delivery is at least once. The ``Confirmations`` reactor enqueues one ``SendConfirmation``
per captured payment, in the transaction that moves its checkpoint. Run the handlers as a
worker process (or in the application, ``create_app(workers=True)``)::

    eventsource worker run examples.shop.payments --queue shop
"""

from __future__ import annotations

from sqlalchemy import Connection

from eventsource import Command, CommandContext, RecordedEvent, Repository, handler
from projections import Reactor, handles

from .domain import Cart, PaymentCaptured

QUEUE = "shop"


class ChargePayment(Command, name="shop.ChargePayment", queue=QUEUE, max_attempts=5):
    """Charge the customer for a checked-out order."""

    cart_id: str
    order_id: str
    amount_cents: int


class SendConfirmation(Command, name="shop.SendConfirmation", queue=QUEUE):
    """Tell the customer the order is paid."""

    cart_id: str
    order_id: str


@handler(ChargePayment, timeout=30)
def charge_payment(command: ChargePayment, ctx: CommandContext) -> None:
    """Capture the payment and record it on the cart, in the attempt's transaction.

    A payment provider would be called here with ``command.order_id`` as its idempotency
    key, so that a second attempt (after a crash before the ack) charges nothing twice.
    """
    carts = Repository(ctx.tx.store, Cart)
    cart = carts.load(command.cart_id)
    cart.capture(command.order_id, command.amount_cents)
    carts.save(cart, tx=ctx.tx)  # commits with the ack, or not at all
    ctx.log.info("payment captured", order_id=command.order_id, cents=command.amount_cents)


@handler(SendConfirmation, timeout=30)
def send_confirmation(command: SendConfirmation, ctx: CommandContext) -> None:
    """'Send' the confirmation: record it on the cart (a mailer would be called here)."""
    carts = Repository(ctx.tx.store, Cart)
    cart = carts.load(command.cart_id)
    cart.confirm(command.order_id, email=f"{cart.customer}@example.com")
    carts.save(cart, tx=ctx.tx)
    ctx.log.info("confirmation sent", order_id=command.order_id)


class Confirmations(Reactor):
    """Every captured payment gets one confirmation, enqueued with this reactor's checkpoint."""

    name = "shop.confirmations"

    @handles(PaymentCaptured)
    def captured(self, event: PaymentCaptured, record: RecordedEvent, tx: Connection) -> None:
        self.enqueue(SendConfirmation(cart_id=record.stream_id, order_id=event.order_id), tx)
