"""The bank's application service: commands on accounts, each one transaction."""

from __future__ import annotations

import uuid

from eventsource import (
    AppendResult,
    CommandQueue,
    ConcurrencyError,
    EventStore,
    Repository,
    correlation,
)

from .commands import SendReceipt
from .domain import Account


class Bank:
    """Opens accounts, moves money, and retries a command when another writer raced it."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.accounts = Repository(store, Account, snapshot_every=50)
        self.commands = CommandQueue(store)

    def open_account(self, account_id: str, owner: str) -> Account:
        account = Account(account_id)
        account.open(owner)
        self.accounts.save(account)  # ConcurrencyError if the id is taken: it expects no stream
        return account

    def deposit(self, account_id: str, amount: int) -> AppendResult | None:
        """Deposit, loading the account afresh when another writer got there first."""
        return self.accounts.update(account_id, lambda account: account.deposit(amount), retries=4)

    def withdraw(self, account_id: str, amount: int) -> AppendResult | None:
        """Withdraw, loading the account afresh when another writer got there first."""
        return self.accounts.update(account_id, lambda account: account.withdraw(amount), retries=4)

    def transfer(self, from_id: str, to_id: str, amount: int) -> str:
        """Move money between two accounts: both streams change in one transaction, or neither.

        The same transaction enqueues a receipt for each account (ordered per account).
        """
        transfer_id = uuid.uuid4().hex
        with correlation(correlation_id=transfer_id):
            for attempt in range(5):
                source, target = self.accounts.load(from_id), self.accounts.load(to_id)
                source.send(transfer_id, to_id, amount)
                target.receive(transfer_id, from_id, amount)
                try:
                    with self.store.transaction() as tx:
                        self.accounts.save(source, tx=tx)
                        self.accounts.save(target, tx=tx)
                        for account_id in (from_id, to_id):
                            receipt = SendReceipt(transfer_id=transfer_id, account_id=account_id)
                            self.commands.enqueue(receipt, ordering_key=account_id, tx=tx)
                except ConcurrencyError:
                    if attempt == 4:
                        raise
                    continue
                return transfer_id
        raise AssertionError("unreachable")
