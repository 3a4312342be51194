"""`eventsource demo`: the bank service end to end, printing what it does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

import projections
from eventsource import (
    AppendResult,
    CommandQueue,
    ConcurrencyError,
    EventSourceError,
    EventStore,
)

from .commands import LargeDeposits, create_tables
from .domain import Account, InsufficientFunds, money
from .read_model import BankReadModel
from .service import Bank


def run_demo(store: EventStore, console: Console) -> None:
    """Writers and a projection worker process: accounts, money, refusals, the read model."""
    bank = Bank(store)
    run = uuid.uuid4().hex[:6]
    ann, bob = f"acc-ann-{run}", f"acc-bob-{run}"
    read_schema = f"{store.schema}_bank"

    console.print(f"[bold]Bank demo[/] (run {run}) on {store.partitions} partitions")
    with store.engine.begin() as tx:  # the read schema exists before two workers create tables
        create_tables(tx, read_schema)
    workers = {
        "projection worker": _start(
            store,
            read_schema,
            "projections",
            "run",
            f"{__package__}.read_model:BankReadModel",
            f"{__package__}.commands:LargeDeposits",
        ),
        "command worker": _start(
            store, read_schema, "worker", "run", f"{__package__}.commands", "--queue", "bank"
        ),
    }
    for what, process in workers.items():
        console.print(f"started a {what} process (pid {process.pid})")
    try:
        _write(bank, console, ann, bob)
        _show_log(store, console, bank, ann, bob)
        # Read-your-writes: wait until the workers have applied everything written so far.
        deadline = time.monotonic() + 60
        for name in (BankReadModel.name, LargeDeposits.name):
            for partition, head in store.heads().items():
                written = AppendResult("", 0, partition, head)
                while head:
                    try:
                        projections.wait_for(store, name, written, timeout=0.5)
                        break
                    except projections.ProjectionTimeout:
                        _check_alive(workers, deadline)
        _show_read_model(store, console, read_schema, run)
        _wait_for_commands(store, workers, deadline)
        _show_commands(store, console, read_schema, run)
    finally:
        for process in workers.values():
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=60) for process in workers.values()]
    console.print(f"workers stopped on SIGTERM (exit codes {codes})")


def _start(store: EventStore, read_schema: str, *command: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EVENTSOURCE_DATABASE_URL": store.url.render_as_string(hide_password=False),
        "EVENTSOURCE_SCHEMA": store.schema,
        "BANK_READ_SCHEMA": read_schema,
        "EVENTSOURCE_LOG_FORMAT": "json",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "eventsource", *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _write(bank: Bank, console: Console, ann: str, bob: str) -> None:
    bank.open_account(ann, "Ann")
    bank.open_account(bob, "Bob")
    console.print(f"opened {ann} and {bob}")

    bank.deposit(ann, 100_00)
    bank.deposit(bob, 20_00)
    bank.deposit(bob, 1_500_00)
    console.print(
        f"deposited {money(100_00)} to Ann, {money(20_00)} and {money(1_500_00)} to Bob"
        " (a large deposit: a reactor enqueues a review)"
    )

    transfer_id = bank.transfer(ann, bob, 30_00)
    console.print(
        f"transferred {money(30_00)} from Ann to Bob in one transaction"
        f" (transfer {transfer_id[:8]}), which also enqueued a receipt for each of them"
    )

    try:
        bank.withdraw(bob, 10_000_00)
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


def _show_log(store: EventStore, console: Console, bank: Bank, ann: str, bob: str) -> None:
    table = Table(title="accounts (loaded from their events)")
    for column in ("account", "owner", "balance", "version"):
        table.add_column(column)
    for account_id in (ann, bob):
        account: Account = bank.accounts.load(account_id)
        table.add_row(account_id, account.owner, money(account.balance), str(account.version))
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


def _show_read_model(store: EventStore, console: Console, read_schema: str, run: str) -> None:
    with store.engine.connect() as conn:
        s = conn.dialect.identifier_preparer.quote_schema(read_schema)
        balances = conn.execute(
            text(
                f"SELECT account_id, owner, balance, movements FROM {s}.balances"
                " WHERE account_id LIKE :run ORDER BY account_id"
            ),
            {"run": f"%-{run}"},
        ).all()
        movements = conn.execute(
            text(
                f"SELECT account_id, version, kind, amount, counterparty FROM {s}.transactions"
                " WHERE account_id LIKE :run ORDER BY account_id, version"
            ),
            {"run": f"%-{run}"},
        ).all()
    table = Table(title=f"read model {read_schema}.balances (built by the worker process)")
    for column in ("account", "owner", "balance", "movements"):
        table.add_column(column)
    for account_id, owner, balance, count in balances:
        table.add_row(account_id, owner, money(balance), str(count))
    console.print(table)
    table = Table(title=f"read model {read_schema}.transactions")
    for column in ("account", "version", "kind", "amount", "counterparty"):
        table.add_column(column)
    for account_id, version, kind, amount, other in movements:
        table.add_row(account_id, str(version), kind, money(amount), other or "")
    console.print(table)


def _wait_for_commands(
    store: EventStore, workers: dict[str, subprocess.Popen[bytes]], deadline: float
) -> None:
    """Until the command worker has run every live command of the bank queue."""
    queue = CommandQueue(store)
    while queue.list(queue="bank"):
        _check_alive(workers, deadline)
        time.sleep(0.05)


def _check_alive(workers: dict[str, subprocess.Popen[bytes]], deadline: float) -> None:
    """Fail at once when a worker process has exited, or when the demo has waited too long."""
    for what, process in workers.items():
        code = process.poll()
        if code is not None:
            raise EventSourceError(f"the demo's {what} process exited early (exit code {code})")
    if time.monotonic() > deadline:
        raise EventSourceError("the demo's workers did not catch up within a minute")


def _show_commands(store: EventStore, console: Console, read_schema: str, run: str) -> None:
    with store.engine.connect() as conn:
        s = conn.dialect.identifier_preparer.quote_schema(read_schema)
        receipts = conn.execute(
            text(
                f"SELECT account_id, transfer_id, balance, attempt FROM {s}.receipts"
                " WHERE account_id LIKE :run ORDER BY account_id"
            ),
            {"run": f"%-{run}"},
        ).all()
        reviews = conn.execute(
            text(
                f"SELECT account_id, amount FROM {s}.reviews WHERE account_id LIKE :run"
                " ORDER BY account_id"
            ),
            {"run": f"%-{run}"},
        ).all()
    table = Table(title=f"{read_schema}.receipts (commands run by the command worker process)")
    for column in ("account", "transfer", "balance when sent", "attempt"):
        table.add_column(column)
    for account_id, transfer_id, balance, attempt in receipts:
        table.add_row(account_id, transfer_id[:8], money(balance), str(attempt))
    console.print(table)
    table = Table(title=f"{read_schema}.reviews (enqueued by the LargeDeposits reactor)")
    for column in ("account", "amount"):
        table.add_column(column)
    for account_id, amount in reviews:
        table.add_row(account_id, money(amount))
    console.print(table)
    dead = CommandQueue(store).dead(queue="bank")
    if dead:
        console.print(f"[red]{len(dead)} dead command(s):[/] see `eventsource commands dead`")
