"""The bank's events and its Account aggregate. Domain code: no database imports here."""

from __future__ import annotations

from eventsource import Aggregate, Event


class AccountOpened(Event, name="bank.AccountOpened"):
    owner: str


class MoneyDeposited(Event, name="bank.MoneyDeposited"):
    amount: int


class MoneyWithdrawn(Event, name="bank.MoneyWithdrawn"):
    amount: int


class TransferSent(Event, name="bank.TransferSent"):
    transfer_id: str
    to_account: str
    amount: int


class TransferReceived(Event, name="bank.TransferReceived"):
    transfer_id: str
    from_account: str
    amount: int


def money(cents: int) -> str:
    """An amount of integer cents in units, as the demo prints it: ``money(150000)`` is
    ``"1500.00"``."""
    return f"{cents / 100:.2f}"


class InsufficientFunds(Exception):
    """The account's balance does not cover the amount."""

    def __init__(self, account_id: str, balance: int, amount: int) -> None:
        self.account_id = account_id
        self.balance = balance
        self.amount = amount
        super().__init__(
            f"account {account_id} has {money(balance)}, cannot pay out {money(amount)}"
        )


class Account(Aggregate, name="bank.Account"):
    """A bank account. Amounts are integer cents; the balance never goes below zero."""

    owner: str = ""
    balance: int = 0
    is_open: bool = False

    def open(self, owner: str) -> None:
        if self.is_open:
            raise ValueError(f"account {self.id} is already open")
        if not owner.strip():
            raise ValueError("owner must not be empty")
        self.record(AccountOpened(owner=owner))

    def deposit(self, amount: int) -> None:
        self._check_amount(amount)
        self.record(MoneyDeposited(amount=amount))

    def withdraw(self, amount: int) -> None:
        self._check_amount(amount)
        self._check_funds(amount)
        self.record(MoneyWithdrawn(amount=amount))

    def send(self, transfer_id: str, to_account: str, amount: int) -> None:
        self._check_amount(amount)
        if to_account == self.id:
            raise ValueError("cannot transfer to the same account")
        self._check_funds(amount)
        self.record(TransferSent(transfer_id=transfer_id, to_account=to_account, amount=amount))

    def receive(self, transfer_id: str, from_account: str, amount: int) -> None:
        self._check_amount(amount)
        self.record(
            TransferReceived(transfer_id=transfer_id, from_account=from_account, amount=amount)
        )

    def apply(self, event: Event) -> None:
        match event:
            case AccountOpened():
                self.owner = event.owner
                self.is_open = True
            case MoneyDeposited() | TransferReceived():
                self.balance += event.amount
            case MoneyWithdrawn() | TransferSent():
                self.balance -= event.amount

    def _check_amount(self, amount: int) -> None:
        if not self.is_open:
            raise ValueError(f"account {self.id} is not open")
        if amount <= 0:
            raise ValueError(f"amount must be positive, got {amount}")

    def _check_funds(self, amount: int) -> None:
        if amount > self.balance:
            raise InsufficientFunds(self.id, self.balance, amount)
