"""Autocommit driver connections for the store's single-statement hot paths.

Appends, enqueues, reads and checkpoint moves are one statement each: they need a bare psycopg
connection in autocommit mode, not SQLAlchemy's connection (whose checkout, reset-on-return and
autocommit switching cost a few tens of microseconds, a tenth of a one-row commit here). They
come from a ``psycopg_pool.ConnectionPool``; a connection is checked each time it is taken
from the pool (see ``stale``), so one that the server closed while it sat idle (a restart,
``pg_terminate_backend``, an idle timeout) is replaced instead of failing the caller.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from eventsource.db._driver import connect

__all__ = ["RawPool", "gone"]

# Seconds a caller waits for a pooled connection before opening one of its own.
QUICK = 0.25

# The pool logs each failed connection attempt as a warning; callers get the error itself.
_pool_log = logging.getLogger("psycopg.pool")
if _pool_log.level == logging.NOTSET:
    _pool_log.setLevel(logging.ERROR)


_SELECT_LIMIT = 1024  # FD_SETSIZE: select() takes descriptors below it


def gone(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection is closed, or its socket has something to read.

    An idle connection (no LISTEN) receives data only when the server is done with it: the
    error message of a terminated backend or a shutdown, then the end of the stream. One
    ``poll`` with no timeout (about a microsecond) tells, without a round trip.
    """
    if conn.closed:
        return True
    fileno = conn.fileno()
    if fileno < _SELECT_LIMIT:  # select() builds no object: the cheapest look
        readable, _, broken = select.select((fileno,), (), (fileno,), 0)
        return bool(readable or broken)
    poller = select.poll()
    poller.register(fileno, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def _check(conn: psycopg.Connection[Any]) -> None:
    if gone(conn):
        conn.close()  # so that the pool discards it instead of taking it back
        raise psycopg.OperationalError("the idle connection was closed by the server")


class RawPool:
    """Up to twice ``size`` autocommit connections to ``conninfo``, opened on demand."""

    def __init__(self, conninfo: str, size: int, prepare_threshold: int | None) -> None:
        """Open connections when asked (none at start); give a failed attempt up at once."""
        self._conninfo = conninfo
        self._prepare_threshold = prepare_threshold
        self._pool = ConnectionPool(
            conninfo,
            min_size=0,
            max_size=max(1, 2 * size),  # as many as the engine: pool_size + max_overflow
            kwargs={"autocommit": True, "prepare_threshold": prepare_threshold},
            check=_check,
            timeout=QUICK,
            # A failed connection attempt is given up at once (the pool would otherwise retry
            # it with backoff, up to minutes apart, and grow no further meanwhile: every
            # caller would wait QUICK and connect on its own until the next retry); the next
            # caller that finds no idle connection starts a new attempt.
            reconnect_timeout=0.0,
            open=True,
            name="eventsource-raw",
        )

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for the block; errors pass through.

        Usually an idle pooled connection, or a new one within a moment. When the pool has
        none to give at once (every connection busy, or its own reconnection attempts backing
        off after an outage), the block gets a connection of its own, closed afterwards: a
        caller never waits for the pool's schedule, and when the server is down, the
        connection error is raised at once.
        """
        try:
            conn = self._pool.getconn(timeout=QUICK)
        except PoolTimeout:
            with connect(self._conninfo, prepare_threshold=self._prepare_threshold) as own:
                yield own
            return
        try:
            yield conn
        finally:
            self._pool.putconn(conn)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        self._pool.close(timeout=1.0)
