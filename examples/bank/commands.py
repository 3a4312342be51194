"""The bank's commands: receipts for transfers, and reviews of large deposits.

A transfer enqueues a ``SendReceipt`` per account in the transaction of its two appends (both
commit, or neither). The ``LargeDeposits`` reactor enqueues a ``ReviewLargeDeposit`` for every
deposit of 1,000.00 or more, exactly once per event. Run the handlers as a worker process::

    eventsource worker run examples.bank.commands --queue bank

They write to the ``receipts`` and ``reviews`` tables of the schema named by BANK_READ_SCHEMA
(default ``bank_read``). Delivery is at least once, so both writes are idempotent.
"""

from __future__ import annotations

import os

from sqlalchemy import Connection, text

from eventsource import Command, CommandContext, RecordedEvent, Repository, handler
from projections import Reactor, handles

from .domain import Account, MoneyDeposited

LARGE_DEPOSIT = 1_000_00  # cents


class SendReceipt(Command, name="bank.SendReceipt", queue="bank", max_attempts=5):
    """Tell an account's owner about a transfer, with the balance after it."""

    transfer_id: str
    account_id: str


class ReviewLargeDeposit(Command, name="bank.ReviewLargeDeposit", queue="bank"):
    """Put a large deposit in front of a clerk."""

    account_id: str
    amount: int
    event_id: str


def read_schema() -> str:
    return os.environ.get("BANK_READ_SCHEMA", "bank_read")


def create_tables(tx: Connection, schema: str | None = None) -> None:
    """The tables the handlers write (idempotent; serialised against concurrent callers)."""
    s = tx.dialect.identifier_preparer.quote_schema(schema or read_schema())
    tx.execute(text("SELECT pg_advisory_xact_lock(hashtext('examples.bank.commands'))"))
    tx.execute(text(f"CREATE SCHEMA IF NOT EXISTS {s}"))
    tx.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {s}.receipts (transfer_id text NOT NULL,"
            " account_id text NOT NULL, balance bigint NOT NULL, attempt integer NOT NULL,"
            " sent_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (transfer_id, account_id))"
        )
    )
    tx.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {s}.reviews (event_id text PRIMARY KEY,"
            " account_id text NOT NULL, amount bigint NOT NULL,"
            " queued_at timestamptz NOT NULL DEFAULT now())"
        )
    )


_tables_ready = False


def _tables(ctx: CommandContext) -> str:
    if not _tables_ready:
        create_tables(ctx.tx.connection)
        ctx.tx.on_commit(_mark_tables_ready)  # other threads may rely on them once committed
    return ctx.tx.connection.dialect.identifier_preparer.quote_schema(read_schema())


def _mark_tables_ready() -> None:
    global _tables_ready  # noqa: PLW0603 - once per process
    _tables_ready = True


@handler(SendReceipt)
def send_receipt(command: SendReceipt, ctx: CommandContext) -> None:
    """'Send' the receipt: record it with the balance read from the account's events."""
    account = Repository(ctx.tx.store, Account).load(command.account_id)
    s = _tables(ctx)
    ctx.tx.execute(
        text(
            f"INSERT INTO {s}.receipts (transfer_id, account_id, balance, attempt)"
            " VALUES (:transfer, :account, :balance, :attempt) ON CONFLICT DO NOTHING"
        ),
        {
            "transfer": command.transfer_id,
            "account": command.account_id,
            "balance": account.balance,
            "attempt": ctx.attempt,
        },
    )
    ctx.log.info("receipt sent", account_id=command.account_id, balance=account.balance)


@handler(ReviewLargeDeposit)
def review_large_deposit(command: ReviewLargeDeposit, ctx: CommandContext) -> None:
    s = _tables(ctx)
    ctx.tx.execute(
        text(
            f"INSERT INTO {s}.reviews (event_id, account_id, amount)"
            " VALUES (:event, :account, :amount) ON CONFLICT DO NOTHING"
        ),
        {"event": command.event_id, "account": command.account_id, "amount": command.amount},
    )


class LargeDeposits(Reactor):
    """Every deposit of 1,000.00 or more gets a review, enqueued with this reactor's checkpoint.

    Run it beside the read model: `eventsource projections run
    examples.bank.read_model:BankReadModel examples.bank.commands:LargeDeposits`.
    """

    name = "bank.large-deposits"

    @handles(MoneyDeposited)
    def deposited(self, event: MoneyDeposited, record: RecordedEvent, tx: Connection) -> None:
        if event.amount >= LARGE_DEPOSIT:
            review = ReviewLargeDeposit(
                account_id=record.stream_id, amount=event.amount, event_id=str(event.event_id)
            )
            self.enqueue(review, tx)
