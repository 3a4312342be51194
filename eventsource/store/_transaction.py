"""Transactions of the sync event store: appends staged and written together at commit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import Connection, Executable, Result

from eventsource.db import driver_connection, fetch
from eventsource.store._staging import Plan, TransactionCore, append_plan, for_the_plan
from eventsource.store._types import AppendResult

if TYPE_CHECKING:
    from eventsource.store._sync import EventStore

__all__ = ["Transaction", "drive"]


def drive(conn: psycopg.Connection[Any], plan: Plan) -> list[AppendResult]:
    """Run an append plan on ``conn``: execute what it yields, send back the rows (or throw
    it the errors that it answers)."""
    try:
        step = next(plan)
        while True:
            try:
                rows = fetch(conn, *step)
            except psycopg.Error as exc:
                if not for_the_plan(exc):
                    raise
                step = plan.throw(exc)
            else:
                step = plan.send(rows)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class Transaction(TransactionCore):
    """One database transaction shared by several appends, enqueues and statements.

    Appends are staged and written together when the transaction commits (or at ``flush()``),
    so the partition heads they lock are held only for the last moment of the transaction.
    The database transaction begins when ``connection`` is first used; one that only staged
    appends is written at commit as a single statement.
    """

    store: EventStore

    def __init__(self, store: EventStore) -> None:
        super().__init__(store)
        self._connection: Connection | None = None

    @property
    def connection(self) -> Connection:
        """The SQLAlchemy ``Connection`` of this transaction (begun on first use)."""
        self._check_open()
        if self._connection is None:
            with self.store._errors():
                connection = self.store._engine.connect()
                try:
                    connection.begin()
                except BaseException:
                    connection.close()
                    raise
            self._connection = connection
        return self._connection

    def begin(self) -> Connection:
        """Begin the database transaction, if not yet, and return its ``Connection`` (the
        same as ``connection``; the async twin needs it, since a property cannot wait)."""
        return self.connection

    def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]:
        """Run a statement in this transaction (a SQLAlchemy ``Connection.execute``)."""
        return self.connection.execute(statement, parameters)

    def flush(self) -> list[AppendResult]:
        """Write the staged appends now; ``ConcurrencyError`` if any stream moved on.

        From here to commit this transaction holds the head locks of the partitions written;
        appends staged after a flush are written by a second flush, whose locks may come out
        of ascending order (PostgreSQL then detects any deadlock and one side must retry).
        """
        self._check_open()
        with self.store._errors():
            return self._write(driver_connection(self.connection), autocommit=False)

    def _write(self, conn: psycopg.Connection[Any], *, autocommit: bool) -> list[AppendResult]:
        """Write the staged appends, then the statements that follow them, on ``conn``."""
        results: list[AppendResult] = []
        if self._staged:
            self._written.extend(self._staged.pending())
            plan = append_plan(
                self._staged, self.store._queries, self.store.partitions, autocommit=autocommit
            )
            results = drive(conn, plan)
        while self._after_flush:
            fetch(conn, *self._after_flush.pop(0))
        return results

    def _commit(self) -> None:
        """Write what is staged and commit."""
        connection = self._connection
        if connection is not None:
            self.flush()
            with self.store._errors():
                connection.commit()
            return
        # Nothing ran on a connection yet: write on a pooled driver connection, with no round
        # trips for BEGIN and COMMIT when the appends are the only statement.
        if not self._staged:
            return
        with self.store._raw() as raw:
            if not self._after_flush:
                self._write(raw, autocommit=True)
                return
            with raw.transaction():
                self._write(raw, autocommit=False)
