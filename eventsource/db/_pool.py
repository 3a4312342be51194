"""Autocommit driver connections for the store's single-statement hot paths.

Appends, enqueues, reads and checkpoint moves are one statement each: they need a bare psycopg
connection in autocommit mode, not SQLAlchemy's connection (whose checkout, reset-on-return and
autocommit switching cost a few tens of microseconds, a tenth of a one-row commit here). They
come from a ``RawPool``.
"""

from __future__ import annotations

import select
import threading
from collections import deque
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from eventsource.db._driver import connect

__all__ = ["RawPool", "gone"]

# Seconds a caller waits for a pooled connection before opening one of its own.
QUICK = 0.25

IDLE = TransactionStatus.IDLE

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


class RawPool:
    """Up to twice ``size`` autocommit connections to ``conninfo``, opened on demand.

    The connections of the store's single-statement hot paths (appends, enqueues, reads,
    checkpoint moves). Taking one and giving it back costs about 6 µs here, half of it the
    ``gone`` check, against about 15 µs with ``psycopg_pool`` (whose checks, reset and
    statistics run in Python on every checkout). An idle
    connection is checked (``gone``) each time it is taken, so one that the server closed while
    it sat idle (a restart, ``pg_terminate_backend``, an idle timeout) is replaced instead of
    failing the caller. One given back in any state but idle (a statement interrupted, the
    connection broken) is closed, not kept.
    """

    def __init__(self, conninfo: str, size: int, prepare_threshold: int | None) -> None:
        """Open connections when asked (none at start)."""
        self._conninfo = conninfo
        self._prepare_threshold = prepare_threshold
        self._max = max(1, 2 * size)  # as many as the engine: pool_size + max_overflow
        self._idle: list[psycopg.Connection[Any]] = []  # the most recently used last
        self._open = 0  # pooled connections open: idle, in use, or being opened
        self._waiters: deque[_Waiter] = deque()  # callers waiting for one, oldest first
        self._closed = False
        self._lock = threading.Lock()

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """A connection for the block; errors pass through.

        Usually an idle pooled connection, else a new one while the pool has room. When the
        pool is full, a caller waits for the next connection given back (they are handed out
        in the order the callers came); if none comes within ``QUICK``, or the pool is closed,
        the block gets a connection of its own, closed afterwards. A caller never waits long,
        and when the server is down, the connection error is raised at once.
        """
        return _Lease(self)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            waiters, self._waiters = list(self._waiters), deque()
        for waiter in waiters:  # they open connections of their own
            waiter.wake.release()
        for conn in idle:
            conn.close()

    def _take(self) -> tuple[psycopg.Connection[Any], bool]:
        """A connection, and whether it is the caller's own (not pooled)."""
        waiter = None
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not gone(conn):
                    return conn, False
                self._open -= 1
                conn.close()
            own = self._closed
            if own:
                pass
            elif self._open < self._max:
                self._open += 1
            else:
                waiter = _Waiter()
                self._waiters.append(waiter)
        if waiter is not None:
            handed, own = self._wait(waiter)
            if handed is not None:
                return handed, False
        if own:
            return self._connect(), True
        try:
            return self._connect(), False
        except BaseException:
            self._closed_one()
            raise

    def _wait(self, waiter: _Waiter) -> tuple[psycopg.Connection[Any] | None, bool]:
        """Wait for a connection given back: (it, False); or (None, False), a place in the pool
        to open one in; or (None, True) when none came within ``QUICK`` or the pool closed."""
        handed = waiter.wake.acquire(timeout=QUICK)
        with self._lock:
            if not handed and waiter in self._waiters:  # none came back in time
                self._waiters.remove(waiter)
                return None, True
        return waiter.conn, waiter.conn is None and self._closed

    def _give(self, conn: psycopg.Connection[Any], own: bool) -> None:
        """Take a connection back: hand it to the oldest waiter, keep it idle, or close it."""
        if own:
            conn.close()
            return
        keep = not conn.closed and conn.pgconn.transaction_status == IDLE
        with self._lock:
            if keep and not self._closed:
                if self._waiters:
                    waiter = self._waiters.popleft()
                    waiter.conn = conn
                    waiter.wake.release()
                else:
                    self._idle.append(conn)
                return
        conn.close()
        self._closed_one()

    def _closed_one(self) -> None:
        """A pooled connection is gone (closed, or never opened): the oldest waiter opens one
        in its place, or the pool has room for one more."""
        with self._lock:
            if self._waiters and not self._closed:
                self._waiters.popleft().wake.release()  # its conn None: it opens one
            else:
                self._open -= 1

    def _connect(self) -> psycopg.Connection[Any]:
        return connect(self._conninfo, prepare_threshold=self._prepare_threshold)


class _Waiter:
    """A caller waiting for a connection: ``wake`` is released when it is handed ``conn``
    (None: it may open one in the pool's place)."""

    __slots__ = ("conn", "wake")

    def __init__(self) -> None:
        self.conn: psycopg.Connection[Any] | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


class _Lease:
    """The block of ``RawPool.connection``: a connection taken on entry, given back on exit."""

    __slots__ = ("_conn", "_own", "_pool")

    def __init__(self, pool: RawPool) -> None:
        self._pool = pool

    def __enter__(self) -> psycopg.Connection[Any]:
        self._conn, self._own = self._pool._take()
        return self._conn

    def __exit__(self, *exc: object) -> None:
        self._pool._give(self._conn, self._own)
