"""A LISTEN connection that comes back after every loss."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from eventsource._errors import first_line
from eventsource.db import connect
from eventsource.runtime._backoff import Backoff

__all__ = ["Listener"]


class Listener:
    """A LISTEN connection that comes back after every loss.

    ``wait`` returns True when a notification arrived or the connection was (re-)established,
    since anything announced while it was down was missed: the caller reads once to catch up.
    While the server is unreachable, ``wait`` sleeps its timeout and tries again with backoff.
    With ``keep_payloads``, the payloads of the notifications are kept for ``heard``.
    """

    # Payloads kept between two ``heard`` calls; beyond, they count as missed.
    MAX_KEPT = 1000

    def __init__(
        self, url: URL, statements: Iterable[str], log: Any, *, keep_payloads: bool = False
    ) -> None:
        self._url = url
        self._statements = list(statements)
        self._log = log
        self._keep = keep_payloads
        self._payloads: list[str] = []
        self._missed = False
        self._conn: psycopg.Connection[Any] | None = None
        self._backoff = Backoff(0.05, 2.0)
        self._retry_at = 0.0
        self._lost = False

    @property
    def listening(self) -> bool:
        """Whether the connection is open (it may still be dead without knowing it yet)."""
        return self._conn is not None and not self._conn.closed

    def open(self) -> bool:
        """Connect and LISTEN now (if not already); whether it is listening."""
        if self.listening:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = connect(self._url)
            for statement in self._statements:
                conn.execute(statement)
        except psycopg.Error as exc:
            if conn is not None:
                with suppress(psycopg.Error):
                    conn.close()
            delay = self._backoff.next()
            self._retry_at = now + delay
            if self._backoff.failures == 1:
                self._log.warning("LISTEN unavailable; retrying", error=first_line(exc))
            return False
        self._conn = conn
        self._backoff.reset()
        if self._lost:
            self._log.info("LISTEN restored")
            self._lost = False
        return True

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Sleep until a notification, a (re)connection, ``stop`` or the timeout."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            if not self.listening:
                if self.open():
                    self._missed = True
                    return True  # catch up on what was announced while deaf
                now = time.monotonic()
                if now >= deadline:
                    return False
                stop.wait(min(deadline, max(self._retry_at, now + 0.01)) - now)
                continue
            left = min(deadline - time.monotonic(), 0.25)  # stay responsive to stop
            if left <= 0:
                return False
            assert self._conn is not None
            heard = False
            try:
                # Not left early: the rest of the notifications read with the first would be
                # lost with the generator.
                for notify in self._conn.notifies(timeout=left, stop_after=1):
                    self._keep_payload(notify.payload)
                    heard = True
            except psycopg.Error as exc:
                self._drop(exc)
            if heard:
                return True
        return False

    def heard(self) -> list[str] | None:
        """The payloads heard since the last call (with ``keep_payloads``), then forgotten;
        None if some may have been missed: a reconnection in ``wait``, too many, or none
        kept."""
        payloads, self._payloads = self._payloads, []
        missed, self._missed = self._missed or not self._keep, False
        return None if missed else payloads

    def _keep_payload(self, payload: str) -> None:
        if not self._keep:
            return
        if len(self._payloads) >= self.MAX_KEPT:
            self._missed = True
            self._payloads.clear()
        if not self._missed:
            self._payloads.append(payload)

    def _drop(self, exc: BaseException) -> None:
        self._log.warning("LISTEN connection lost; reconnecting", error=first_line(exc))
        self._lost = True
        self.close()
        self._retry_at = time.monotonic() + self._backoff.next()

    def close(self) -> None:
        """Close the connection, if any; errors of a dead one are ignored."""
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
