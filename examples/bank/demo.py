"""`eventsource demo`: the bank service end to end, printing what it does."""

from __future__ import annotations

import uuid

from rich.console import Console
from rich.table import Table

from eventsource import ConcurrencyError, EventStore

from .domain import Account, InsufficientFunds
from .service import Bank


def run_demo(store: EventStore, console: Console) -> None:
    """Open accounts, move money, show a rule and a race being refused, then the log itself."""
    bank = Bank(store)
    run = uuid.uuid4().hex[:6]
    ann, bob = f"acc-ann-{run}", f"acc-bob-{run}"

    console.print(f"[bold]Bank demo[/] (run {run}) on {store.partitions} partitions")
    bank.open_account(ann, "Ann")
    bank.open_account(bob, "Bob")
    console.print(f"opened {ann} and {bob}")

    bank.deposit(ann, 100_00)
    bank.deposit(bob, 20_00)
    console.print("deposited 100.00 to Ann and 20.00 to Bob")

    transfer_id = bank.transfer(ann, bob, 30_00)
    console.print(
        f"transferred 30.00 from Ann to Bob in one transaction (transfer {transfer_id[:8]})"
    )

    try:
        bank.withdraw(bob, 1_000_00)
    except InsufficientFunds as exc:
        console.print(f"[yellow]refused by the business rule:[/] {exc}")

    # Two clerks load the same account; the second save loses the race and writes nothing.
    first, second = bank.accounts.load(ann), bank.accounts.load(ann)
    first.withdraw(10_00)
    second.withdraw(15_00)
    bank.accounts.save(first)
    try:
        bank.accounts.save(second)
    except ConcurrencyError as exc:
        console.print(f"[yellow]refused by optimistic concurrency:[/] {exc}")

    table = Table(title="accounts")
    for column in ("account", "owner", "balance", "version"):
        table.add_column(column)
    for account_id in (ann, bob):
        account: Account = bank.accounts.load(account_id)
        table.add_row(
            account_id, account.owner, f"{account.balance / 100:.2f}", str(account.version)
        )
    console.print(table)

    log = Table(title="the log: each stream lives in one partition, positions are dense")
    for column in ("stream", "version", "partition", "position", "event", "correlation"):
        log.add_column(column)
    for account_id in (ann, bob):
        for record in store.read_stream(account_id):
            log.add_row(
                record.stream_id,
                str(record.stream_version),
                str(record.partition),
                str(record.position),
                record.event_type,
                str(record.metadata.get("correlation_id", ""))[:8],
            )
    console.print(log)
