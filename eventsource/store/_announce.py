"""Announcing written partitions to live readers (LISTEN/NOTIFY), off the writers' path.

A NOTIFY inside the appending transaction would make every commit take PostgreSQL's
database-wide notify lock, serialising concurrent writers through their commit flushes (a
third of the throughput of 8 writers, measured). Instead, once an append has committed, its
partitions are handed to this process's announcer thread, which coalesces them and sends one
``pg_notify`` on its own connection with ``synchronous_commit`` off (no flush to wait for).
Readers wake within about a millisecond of a commit after a quiet spell (a burst of commits
is announced at most every few milliseconds); a reader that misses an announcement
(the writer died just after committing) still finds the events on its next poll.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable

import psycopg

from eventsource._errors import first_line, is_outage
from eventsource._logging import get_logger
from eventsource.db import Direct, connect, fetch, gone

__all__ = ["Announcer"]

log = get_logger("eventsource.announce")


class Announcer:
    """Coalesces announced items per channel and sends them from a daemon thread.

    Items are partition numbers on the store's channel and queue names on the command channel.
    The first announcement after a quiet spell goes out at once; those that follow within
    ``LINGER`` are coalesced into one ``pg_notify`` per channel.
    """

    # Seconds between two sends: at most ~200 announcements a second per process. Under a
    # steady stream of commits the readers are busy anyway; an idle reader is woken at once.
    LINGER = 0.005

    def __init__(
        self, conninfo: str, channel: str, statement: str, prepare_threshold: int | None = None
    ) -> None:
        """Announce on ``channel`` with ``statement`` over a connection of its own, opened on
        first use (its statement prepared as the store's are: ``prepare_threshold``)."""
        self._conninfo = conninfo
        self._prepare_threshold = prepare_threshold
        self._channel = channel
        self._statement = Direct(statement)  # sent through libpq: the cheapest send
        self._dirty: dict[str, set[str]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def announce(self, items: Iterable[object], channel: str | None = None) -> None:
        """Queue items (partitions by default) to announce on ``channel``; returns at once."""
        names = {str(item) for item in items}
        if not names:
            return
        with self._cond:
            if self._closed:
                return
            self._dirty.setdefault(channel or self._channel, set()).update(names)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="eventsource-announcer", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        """Send what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        """The announcer thread: send what was queued, coalesced, until closed."""
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while True:
            with self._cond:
                while not self._dirty and not self._closed:
                    self._cond.wait()
                dirty, self._dirty = self._dirty, {}
                closing = self._closed
            for channel, items in dirty.items():
                conn = self._send(conn, channel, items)
            if closing:
                break
            # Linger after each send, so that the commits of a burst make one announcement
            # when it ends. (Waiting for the next one instead would wake this thread for each
            # burst's first commit only to put it to sleep again: a thread switch, and the
            # writer's GIL, for nothing.)
            time.sleep(self.LINGER)
        if conn is not None:
            conn.close()

    def _send(
        self, conn: psycopg.Connection[tuple[object, ...]] | None, channel: str, items: set[str]
    ) -> psycopg.Connection[tuple[object, ...]] | None:
        for payload in payloads(items):
            conn = self._notify(conn, channel, payload)
        return conn

    def _notify(
        self, conn: psycopg.Connection[tuple[object, ...]] | None, channel: str, payload: str
    ) -> psycopg.Connection[tuple[object, ...]] | None:
        """Send one notification; a connection that broke is replaced and the send retried."""
        for attempt in (1, 2):
            try:
                if conn is not None and gone(conn):
                    conn.close()
                    conn = None
                if conn is None:
                    conn = connect(self._conninfo, prepare_threshold=self._prepare_threshold)
                    conn.execute("SET synchronous_commit TO off")
                fetch(conn, self._statement, {"channel": channel, "payload": payload})
                return conn
            except psycopg.Error as exc:
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                    conn = None
                if attempt == 2 or not is_outage(exc):
                    # Announcements are a latency optimisation: readers poll as well.
                    log.warning("announcement failed", channel=channel, error=first_line(exc))
        return None


# PostgreSQL refuses a notification payload of 8,000 bytes or more.
MAX_PAYLOAD = 7999


def payloads(items: Iterable[str], limit: int = MAX_PAYLOAD) -> list[str]:
    """Comma-separated payloads of the items, each under PostgreSQL's size limit."""
    out: list[str] = []
    current = ""
    for item in sorted(items, key=lambda item: (len(item), item)):
        candidate = f"{current},{item}" if current else item
        if current and len(candidate.encode("utf-8")) > limit:
            out.append(current)
            candidate = item
        current = candidate
    if current:
        out.append(current)
    return out
