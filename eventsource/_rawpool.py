"""Autocommit driver connections for the store's single-statement hot paths.

Appends, enqueues, reads and checkpoint moves are one statement each: they need a bare psycopg
connection in autocommit mode, not SQLAlchemy's connection (whose checkout, reset-on-return and
autocommit switching cost a few tens of microseconds, a tenth of a one-row commit here). This
pool keeps up to ``size`` idle connections, last in first out; a connection that broke, or that
is left inside a transaction, is closed instead of being kept.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

__all__ = ["RawPool"]

IDLE = TransactionStatus.IDLE


class RawPool:
    """Up to ``size`` idle autocommit connections to ``conninfo``."""

    def __init__(self, conninfo: str, size: int, prepare_threshold: int | None) -> None:
        self._conninfo = conninfo
        self._size = size
        self._prepare_threshold = prepare_threshold
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for the block (a new one when none is idle); errors pass through."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = psycopg.connect(
                self._conninfo, autocommit=True, prepare_threshold=self._prepare_threshold
            )
        try:
            yield conn
        finally:
            self._put(conn)

    def _put(self, conn: psycopg.Connection[Any]) -> None:
        if not conn.closed and conn.info.transaction_status == IDLE:
            with self._lock:
                if not self._closed and len(self._idle) < self._size:
                    self._idle.append(conn)
                    return
        with suppress(psycopg.Error):
            conn.close()

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with suppress(psycopg.Error):
                conn.close()
