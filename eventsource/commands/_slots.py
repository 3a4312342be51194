"""A worker's slots: threads that each claim a batch of ready commands and run it in order.

A slot has its own connection. Its claim takes about 0.1 s of work (``FOR UPDATE SKIP
LOCKED``, a lease and a fresh lease token per command); it runs the handlers one after
another and acks the finished commands together, at least every 50 ms. A slot whose claim
finds nothing waits to be woken (by a NOTIFY, a freed ordering key, a due retry) or for
``poll_interval``; an outage is waited out on a new connection.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from eventsource._errors import first_line, is_outage
from eventsource.commands._attempt import _Attempts
from eventsource.commands._core import _Claimed, _close, _Slot
from eventsource.db import connect, fetch
from eventsource.runtime import Backoff, close_thread_loop

__all__: list[str] = []


class _Slots(_Attempts):
    """The worker's part that claims commands and runs them, one thread per slot."""

    _claim_sql: str  # ``claim_one_queue`` for a single queue, else ``claim``
    _claim_params: dict[str, Any]  # its parameters but the limit

    def _slot_loop(self, slot: _Slot) -> None:
        """Claim and run commands until stopped; outages are waited out, anything else kills."""
        conn: psycopg.Connection[Any] | None = None
        backoff = Backoff()
        try:
            while not self._stop.is_set():
                with self._wake:
                    generation = self._generation
                try:
                    if conn is None or conn.closed:
                        conn = connect(
                            self.store.url, prepare_threshold=self.store._prepare_threshold
                        )
                    claimed = self._claim(conn, slot)
                    if claimed:
                        self._work(conn, slot, claimed)
                    if backoff.reset():
                        self._log.info("database available again", slot=slot.index)
                    if claimed:
                        continue
                except psycopg.Error as exc:
                    # The connection broke (an outage), or the server refused a statement of
                    # the queue's own: give up what this slot holds (the commands that never
                    # started are not charged an attempt; their leases run out and they are
                    # reclaimed), and start afresh on a new connection after a pause.
                    if backoff.failures == 0:
                        level = self._log.warning if is_outage(exc) else self._log.error
                        level(
                            "slot lost its connection; retrying",
                            slot=slot.index,
                            error=first_line(exc),
                            outage=is_outage(exc),
                        )
                    with self._held_lock:
                        slot.held.clear()
                    slot.busy = False
                    _close(conn)
                    conn = None
                    self._stop.wait(backoff.next())
                    continue
                with self._wake:
                    if self._generation == generation and not self._stop.is_set():
                        self._wake.wait(self.poll_interval)
        finally:
            close_thread_loop()
            _close(conn)

    def _claim(self, conn: psycopg.Connection[Any], slot: _Slot) -> list[_Claimed]:
        """Claim ready commands for ``slot``, held from now on; in the order to run them."""
        # Claim about 0.1 s of work: many commands when handlers are quick, one when slow
        # (and one until this slot has timed a handler), so that idle slots and other
        # workers are not kept waiting behind a long batch.
        avg = slot.avg_seconds
        limit = 1 if avg is None else max(1, min(self.batch_size, int(0.1 / max(avg, 1e-6))))
        slot.busy = True
        rows = fetch(conn, self._claim_sql, {**self._claim_params, "limit": limit})
        # In the claim's order: the first (its attempt counted by the claim), then by
        # priority, time and id.
        claimed = sorted(
            (_Claimed(*row) for row in rows),
            key=lambda c: (not c.counted, -c.priority, c.run_at, c.id),
        )
        with self._held_lock:
            for command in claimed:
                slot.held[command.id] = command
        if not claimed:
            slot.busy = False
        elif len(claimed) == limit:
            self._wake_one()  # there may be more: let another idle slot claim too
        return claimed

    def _work(self, conn: psycopg.Connection[Any], slot: _Slot, claimed: list[_Claimed]) -> None:
        """Run a claimed batch in order, acking as it goes; once stopping, release the rest.

        Each handler's time feeds the slot's average, which sizes its next claim.
        """
        acks: list[_Claimed] = []
        flushed = time.monotonic()
        try:
            for index, command in enumerate(claimed):
                if self._stop.is_set():
                    self._release(conn, slot, claimed[index:])
                    break
                started = time.monotonic()
                slot.running = command.id
                command.started = True
                try:
                    if self._run_one(conn, slot, command):
                        acks.append(command)
                finally:
                    slot.running = None
                now = time.monotonic()
                took = now - started
                avg = slot.avg_seconds
                slot.avg_seconds = took if avg is None else (avg + took) / 2
                # Ack finished work at least every 50 ms, and at once when a command of an
                # ordering key is done: the key's next command waits for that ack. After the
                # batch's last command this slot claims again at once: no other is woken.
                if acks and (now - flushed > 0.05 or acks[-1].ordering_key is not None):
                    self._ack(conn, slot, acks, wake=index + 1 < len(claimed))
                    acks, flushed = [], now
        finally:
            if acks:
                self._ack(conn, slot, acks)
            slot.busy = False
