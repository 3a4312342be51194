"""The bank's read model: balances and a transactions list, kept by a projection.

Run it as a worker process with `eventsource projections run examples.bank.read_model:BankReadModel`
(the tables live in the schema named by BANK_READ_SCHEMA, default ``bank_read``), rebuild it
with `eventsource projections replay examples.bank.read_model:BankReadModel --yes`.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Connection, text

from eventsource import RecordedEvent
from projections import Projection, handles

from .domain import (
    AccountOpened,
    MoneyDeposited,
    MoneyWithdrawn,
    TransferReceived,
    TransferSent,
)


class BankReadModel(Projection):
    """Balances per account, and every movement of money, queryable with plain SQL."""

    name = "bank.read_model"

    def __init__(self, schema: str | None = None) -> None:
        self.schema_name = schema or os.environ.get("BANK_READ_SCHEMA", "bank_read")

    def _s(self, tx: Connection) -> str:
        """The read model's schema, quoted for this connection's dialect."""
        return tx.dialect.identifier_preparer.quote_schema(self.schema_name)

    def setup(self, tx: Connection) -> None:
        s = self._s(tx)
        tx.execute(text(f"CREATE SCHEMA IF NOT EXISTS {s}"))
        tx.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {s}.balances (account_id text PRIMARY KEY,"
                " owner text NOT NULL, balance bigint NOT NULL DEFAULT 0,"
                " movements integer NOT NULL DEFAULT 0)"
            )
        )
        tx.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {s}.transactions (account_id text NOT NULL,"
                " version bigint NOT NULL, kind text NOT NULL, amount bigint NOT NULL,"
                " counterparty text, recorded_at timestamptz NOT NULL,"
                " PRIMARY KEY (account_id, version))"
            )
        )

    def reset(self, tx: Connection) -> None:
        s = self._s(tx)
        tx.execute(text(f"TRUNCATE {s}.balances, {s}.transactions"))

    @handles(AccountOpened)
    def opened(self, event: AccountOpened, record: RecordedEvent, tx: Connection) -> None:
        tx.execute(
            text(f"INSERT INTO {self._s(tx)}.balances (account_id, owner) VALUES (:id, :owner)"),
            {"id": record.stream_id, "owner": event.owner},
        )

    @handles(MoneyDeposited)
    def deposited(self, event: MoneyDeposited, record: RecordedEvent, tx: Connection) -> None:
        self._move(tx, record, "deposit", event.amount, None)

    @handles(MoneyWithdrawn)
    def withdrawn(self, event: MoneyWithdrawn, record: RecordedEvent, tx: Connection) -> None:
        self._move(tx, record, "withdrawal", -event.amount, None)

    @handles(TransferSent)
    def sent(self, event: TransferSent, record: RecordedEvent, tx: Connection) -> None:
        self._move(tx, record, "transfer out", -event.amount, event.to_account)

    @handles(TransferReceived)
    def received(self, event: TransferReceived, record: RecordedEvent, tx: Connection) -> None:
        self._move(tx, record, "transfer in", event.amount, event.from_account)

    def _move(
        self, tx: Connection, record: RecordedEvent, kind: str, amount: int, other: str | None
    ) -> None:
        params: dict[str, Any] = {
            "id": record.stream_id,
            "version": record.stream_version,
            "kind": kind,
            "amount": amount,
            "other": other,
            "at": record.recorded_at,
        }
        s = self._s(tx)
        tx.execute(
            text(
                f"UPDATE {s}.balances SET balance = balance + :amount,"
                " movements = movements + 1 WHERE account_id = :id"
            ),
            params,
        )
        tx.execute(
            text(
                f"INSERT INTO {s}.transactions (account_id, version, kind, amount,"
                " counterparty, recorded_at) VALUES (:id, :version, :kind, :amount, :other, :at)"
            ),
            params,
        )
