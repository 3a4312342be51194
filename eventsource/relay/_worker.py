"""The relay worker: publishes the partitions it holds, in order, to a sink.

Each round reads a window (up to ``batch_size`` events of every held partition behind its
head, in one statement), publishes it, waits for the engine's acknowledgements, and moves the
checkpoint of each partition to the last position acknowledged in order. A checkpoint never
moves before the engine has the events, so a relay killed at any moment republishes at most
the window it had in flight, and the engine drops those re-publications by message id.

A partition is compared with the engine when it is claimed: if the engine already holds later
positions of it (a window acknowledged just before a crash, its checkpoint not yet moved),
the checkpoint moves there first, so that even a restart after the duplicate window has passed
stores nothing twice.

Outages of PostgreSQL and of the engine are waited out with backoff (one log line when each
starts and ends); a partition whose messages the engine refuses is retried with backoff, its
error shown by ``relay status``; a sink whose target does not fit stops the worker.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from eventsource._checks import check_int, check_name, check_seconds
from eventsource._errors import first_line, is_outage
from eventsource._logging import get_logger
from eventsource._telemetry import NO_SPAN, NoSpan, Span, links_to, traced, tracing
from eventsource.db import fetch
from eventsource.relay._errors import MalformedMessage, SinkMisconfigured, SinkUnavailable
from eventsource.relay._leases import Leases
from eventsource.relay._messages import RelayMessage, messages_from_rows
from eventsource.relay._queries import RelayQueries
from eventsource.relay._sink import Sent, Sink
from eventsource.runtime import Backoff, Listener, default_worker_id
from eventsource.store import EventStore

__all__ = ["RelayWorker"]

log = get_logger("eventsource.relay")

_RETRY_DELAYS = (0.2, 1.0, 5.0, 15.0)
SEND = "eventsource.relay.send"  # the span of a window handed to the engine
SETTLE = "eventsource.relay.settle"  # the span of its acknowledgements and checkpoints


class RelayWorker:
    """Relays the partitions of ``store`` that this worker holds leases on to ``sink``.

    Several workers of one relay (the sink's name) share the partitions; ``lease_ttl``: how
    long a lease outlives its last heartbeat (every ``heartbeat_interval``); ``batch_size``:
    events per partition per window; ``poll_interval``: the longest idle wait without an
    append's announcement.

    >>> worker = RelayWorker(store, NatsSink("nats://127.0.0.1:4222"))  # doctest: +SKIP
    >>> worker.run()  # until worker.stop()                               # doctest: +SKIP
    """

    def __init__(
        self,
        store: EventStore,
        sink: Sink,
        *,
        worker_id: str | None = None,
        lease_ttl: float = 10.0,
        heartbeat_interval: float = 2.0,
        poll_interval: float = 1.0,
        batch_size: int = 500,
    ) -> None:
        """A worker of the relay named after ``sink`` (nothing runs before ``run``)."""
        self.lease_ttl = check_seconds(lease_ttl, "lease_ttl", low=0.5, high=3600)
        self.heartbeat_interval = check_seconds(heartbeat_interval, "heartbeat_interval", low=0.01)
        self.poll_interval = check_seconds(poll_interval, "poll_interval", low=0.01)
        self.batch_size = check_int(batch_size, "batch_size", low=1, high=100_000)
        if self.lease_ttl <= self.heartbeat_interval:
            raise ValueError(
                f"lease_ttl ({lease_ttl:g} s) must be longer than heartbeat_interval"
                f" ({heartbeat_interval:g} s)"
            )
        window = sink.min_dedupe_window
        if window and window < self.lease_ttl + 30:
            raise ValueError(
                f"the sink's duplicate window ({window:g} s) must be longer than the lease TTL"
                f" ({self.lease_ttl:g} s) plus 30 s"
            )
        self.store = store
        self.sink = sink
        self.worker_id = check_name(worker_id, "worker_id") if worker_id else default_worker_id()
        self.relayed = 0  # events acknowledged by the engine, since start
        self._stop = threading.Event()
        self._log = log.bind(relay=sink.name, worker=self.worker_id)
        self.leases = Leases(
            store,
            RelayQueries.for_schema(store.schema),
            sink.name,
            self.worker_id,
            self.lease_ttl,
            self._log,
        )
        self._attempts: dict[int, int] = {}
        # The window sent and not yet settled: how to wait for it, its last position per
        # partition, and its messages.
        self._in_flight: tuple[Sent, dict[int, int], dict[int, list[RelayMessage]]] | None = None
        self._retry_at: dict[int, float] = {}
        self._prefix = sink.subject_prefix
        self._next_beat = 0.0
        self._db_backoff, self._sink_backoff = Backoff(), Backoff(0.2, 5.0)

    def stop(self) -> None:
        """Ask the worker to stop after the window in hand (safe from a signal handler)."""
        self._stop.set()

    def run(self, *, stop_when_caught_up: bool = False) -> None:
        """Relay until ``stop()`` (or, with ``stop_when_caught_up``, until every partition of
        this worker's share is relayed up to its head).

        The database must be reachable at start; the engine need not be. Later outages of
        either are waited out. ``SinkMisconfigured`` (the target does not fit) and any
        unexpected error stop the worker and are raised here.
        """
        self.leases.setup()
        listener = Listener(self.store.url, [self.store._queries.listen], self._log)
        listener.open()
        self._log.info("relay started", target=repr(self.sink))
        try:
            while not self._stop.is_set():
                worked = self._step(stop_when_caught_up)
                if worked is None:
                    break
                if not worked and not self._stop.is_set():
                    listener.wait(self._idle_timeout(), self._stop)
            self._settle_on_stop()
        finally:
            try:
                self.leases.leave()
            finally:
                listener.close()
                self.sink.close()
                self._log.info("relay stopped", relayed=self.relayed)

    def _settle_on_stop(self) -> None:
        """Settle the window in flight, if any (unless an outage is on: it is then sent
        again by whichever worker takes its partitions, and dropped as a duplicate)."""
        try:
            self._settle()
        except Exception as exc:
            if not (isinstance(exc, SinkUnavailable) or is_outage(exc)):
                raise

    def _step(self, stop_when_caught_up: bool) -> bool | None:
        """Heartbeat when due, then one window; whether anything moved (None: caught up).

        Outages are waited out here (False); other errors are raised.
        """
        try:
            self.sink.open()
            if time.monotonic() >= self._next_beat:
                self.leases.heartbeat()
                self._next_beat = time.monotonic() + self.heartbeat_interval
            heads = self.store.heads()
            if stop_when_caught_up and self.caught_up(heads):
                return None
            worked = self.work(heads)
        except SinkMisconfigured:
            raise
        except SinkUnavailable as exc:
            delay = self._sink_backoff.next()
            if self._sink_backoff.failures == 1:
                self._log.warning("NATS unavailable; retrying", error=str(exc))
            self._stop.wait(delay)
            return False
        except Exception as exc:
            if not is_outage(exc):
                raise
            delay = self._db_backoff.next()
            if self._db_backoff.failures == 1:
                self._log.warning("database unavailable; waiting", error=first_line(exc))
            self._stop.wait(delay)
            self._next_beat = 0.0  # renew the leases first thing once it is back
            return False
        if self._sink_backoff.reset():
            self._log.info("NATS available again")
        if self._db_backoff.reset():
            self._log.info("database available again")
        return worked

    def caught_up(self, heads: dict[int, int]) -> bool:
        """Every partition of this worker's share is held and relayed up to its head."""
        held = self.leases.held
        if self.leases.desired - held.keys():
            return False
        return all(lease.position >= heads.get(p, 0) for p, lease in held.items())

    def work(self, heads: dict[int, int]) -> bool:
        """Read the next window while the one in flight is acknowledged, then send it.

        The next window of a partition starts after what is in flight of it; it is sent only
        once the window in flight is settled, and its part of a partition whose messages were
        refused is dropped, so that what the engine stores of a partition stays a prefix of
        its log. Whether anything moved.
        """
        now = time.monotonic()
        self._reconcile(heads)
        sent_to = self._in_flight[1] if self._in_flight else {}
        behind = {}
        for p, lease in self.leases.held.items():
            after = max(lease.position, sent_to.get(p, 0))
            if after < heads.get(p, 0) and self._retry_at.get(p, 0.0) <= now:
                behind[p] = after
        window = self._read(behind) if behind else {}
        moved, failed = self._settle()
        for partition in list(window):
            if partition in failed or partition not in self.leases.held:
                del window[partition]
        if window:
            ends = {p: messages[-1].position for p, messages in window.items()}
            with self._span(SEND, window) as span:
                self._in_flight = (self.sink.send(window), ends, window)
                if span.is_recording():
                    span.set_attributes(self._attributes(window))
        return moved or bool(window)

    def _span(self, name: str, window: dict[int, list[RelayMessage]]) -> Span | NoSpan:
        """A producer span of a window, linked to the traces its events carry (only while
        a tracer provider is set)."""
        if not tracing():
            return NO_SPAN
        carried = [m.headers for ms in window.values() for m in ms if b"traceparent" in m.header]
        return Span(name, SpanKind.PRODUCER, links=links_to(carried))

    def _attributes(self, window: dict[int, list[RelayMessage]]) -> dict[str, Any]:
        """The attributes of a window's spans."""
        return {
            "messaging.system": "nats",
            "messaging.destination.name": self.sink.name,
            "messaging.batch.message_count": sum(len(ms) for ms in window.values()),
            "eventsource.relay.partitions": sorted(window),
        }

    def _settle(self) -> tuple[bool, set[int]]:
        """Wait for the acknowledgements of the window in flight and move the checkpoints to
        them; whether any moved, and the partitions whose messages were refused."""
        if self._in_flight is None:
            return False, set()
        sent, _, window = self._in_flight
        self._in_flight = None
        with traced(SETTLE, SpanKind.PRODUCER) as span:
            acked = sent.wait()
            moved = {p: a.position for p, a in acked.items() if a.position is not None}
            advanced = self.leases.advance(moved)
            if span.is_recording():
                span.set_attributes(self._attributes(window))
                refused = sorted(p for p, a in acked.items() if a.error is not None)
                if refused:
                    span.set_status(Status(StatusCode.ERROR, f"refused in partitions {refused}"))
        self.relayed += sum(sum(1 for m in window[p] if m.position <= moved[p]) for p in advanced)
        failed = set()
        for partition, ack in acked.items():
            if ack.error is None:
                self._attempts.pop(partition, None)
                self._retry_at.pop(partition, None)
            else:
                failed.add(partition)
                self._failed(partition, window[partition], ack.error)
        return bool(advanced), failed

    def _reconcile(self, heads: dict[int, int]) -> None:
        """Move freshly claimed checkpoints to what the engine already holds of them."""
        found: dict[int, int] = {}
        for partition, lease in self.leases.held.items():
            if not lease.fresh:
                continue
            try:
                last = self.sink.last_position(partition)  # an outage: asked again after it
            except MalformedMessage as exc:
                lease.fresh = False
                # Not the relay's message: the stream's tail cannot say where the relay got.
                self._log.error(
                    "foreign message at the stream's tail", partition=partition, error=str(exc)
                )
                self.leases.record_error(partition, f"at the stream's tail: {exc}")
                continue
            lease.fresh = False
            if last > lease.position:
                head = heads.get(partition, 0)
                if last > head:
                    self._log.error(
                        "the stream holds later positions than the log's head: is another"
                        " event store relaying to it?",
                        partition=partition,
                        position=last,
                        head=head,
                    )
                    continue
                found[partition] = last
        if found:
            self._log.info("checkpoints moved to the stream's tail", positions=found)
            self.leases.advance(found)

    def _read(self, behind: dict[int, int]) -> dict[int, list[RelayMessage]]:
        """Up to ``batch_size`` events of each partition after its position, as messages."""
        partitions = sorted(behind)
        with self.store._raw() as conn:
            rows = fetch(
                conn,
                self.leases.queries.read_partitions,
                {
                    "partitions": partitions,
                    "after": [behind[p] for p in partitions],
                    "limit": self.batch_size,
                },
            )
        window: dict[int, list[RelayMessage]] = {}
        for message in messages_from_rows(rows, self._prefix):
            window.setdefault(message.partition, []).append(message)
        return window

    def _failed(self, partition: int, messages: list[RelayMessage], error: BaseException) -> None:
        """A partition's window was refused: retry it later, with its error on show."""
        attempts = self._attempts.get(partition, 0) + 1
        self._attempts[partition] = attempts
        delay = _RETRY_DELAYS[min(attempts, len(_RETRY_DELAYS)) - 1]
        self._retry_at[partition] = time.monotonic() + delay
        lease = self.leases.held.get(partition)
        position = lease.position + 1 if lease else messages[0].position
        self._log.warning(
            "publish failed; will retry",
            partition=partition,
            position=position,
            attempt=attempts,
            delay=delay,
            error=f"{type(error).__name__}: {error}",
        )
        text = "".join(traceback.format_exception_only(error)).strip()
        self.leases.record_error(partition, f"at position {position}: {text}"[-4000:])

    def _idle_timeout(self) -> float:
        """How long to wait for an announcement before the next heartbeat, poll or retry."""
        now = time.monotonic()
        wake = min(now + self.poll_interval, self._next_beat)
        for when in self._retry_at.values():
            if when > now:
                wake = min(wake, when)
        return max(0.0, wake - now)


def status_rows(store: EventStore) -> list[dict[str, Any]]:
    """Every relay's partitions: position, head, lag, owner, lease, updated, error."""
    queries = RelayQueries.for_schema(store.schema)
    with store._raw() as conn:
        rows = fetch(conn, queries.status)
    return [
        {
            "relay": relay,
            "partition": partition,
            "position": position,
            "head": head,
            "lag": max(0, head - position),
            "owner": owner,
            "lease_until": lease_until.isoformat() if lease_until else None,
            "updated_at": updated_at.isoformat() if updated_at else None,
            "error": error,
            "error_at": error_at.isoformat() if error_at else None,
        }
        for (
            relay,
            partition,
            position,
            head,
            owner,
            lease_until,
            updated_at,
            error,
            error_at,
        ) in rows
    ]
