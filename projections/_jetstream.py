"""Projections from NATS JetStream: the log as the relay published it, read into a read model
in another database.

A ``JetStreamSource`` reads partition ``p`` from subject ``<prefix>.p`` of the stream. The
worker's checkpoints stay in its own database (the read model's), moved in the same
transaction as the handlers' writes, exactly as for the PostgreSQL log; a checkpoint is the
partition's *position*, which every relayed message carries, so a batch read twice (after a
crash or a lost lease) is applied once. The stream sequence to resume from is found again
from the position (a binary search over the subject, a few dozen lookups) whenever the worker
does not already stand there.

Every message of a partition must be a relayed event, in position order and dense: a message
without the relay's headers, with a malformed one, or a gap in the positions is an error of
the partition (its poison policy stops it, ``projections status`` shows it), never skipped.
A position seen again (a re-publication after the duplicate window) is skipped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import psycopg

from eventsource import RecordedEvent, relay

__all__ = ["JetStreamSource"]

_RESYNC = 5.0  # seconds between two readings of the heads from the stream
_UNKNOWN_HEAD = 2**62  # a partition whose last message is malformed: read on, to the error


@dataclass
class _Cursor:
    """A partition's ordered consumer, standing after ``after``."""

    after: int
    sub: Any


class JetStreamSource:
    """The relayed log: stream ``stream``, subjects ``<subject_prefix>.<partition>``.

    >>> source = JetStreamSource("nats://127.0.0.1:4222", stream="EVENTS")
    >>> projections.run(read_model_store, [Balances()], source=source)  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = "EVENTS",
        subject_prefix: str = "events",
        partitions: int | None = None,
        read_timeout: float = 2.0,
    ) -> None:
        """A source on the server at ``url``; ``partitions``: how many to read (default: the
        worker's store's count, which must equal the relayed store's)."""
        self.stream = relay.check_stream_name(stream)
        self.subject_prefix = relay.check_subject_prefix(subject_prefix)
        self.partitions = partitions
        self.read_timeout = float(read_timeout)
        self.client = relay.NatsClient(url, name="projections", request_timeout=5.0)
        self._cursors: dict[int, _Cursor] = {}
        self._heads_seen: dict[int, int] = {}
        self._live: Any = None  # the connection the waiter listens on
        self._synced_until = 0.0
        self._lock = threading.Lock()  # one worker thread reads at a time

    def __repr__(self) -> str:
        return f"<JetStreamSource stream={self.stream} prefix={self.subject_prefix}>"

    def bind(self, store: Any) -> None:
        """Read the partitions of the worker's ``store`` (unless set at creation)."""
        if self.partitions is None:
            self.partitions = int(store.partitions)

    # -- heads -----------------------------------------------------------------------------

    def heads(self) -> dict[int, int]:
        """The position of the last message of each partition's subject (0: none yet).

        ``SinkMisconfigured`` if the stream holds partitions that the worker's store does not have
        (its read model would miss them): the two stores must have as many partitions.
        """
        now = time.monotonic()
        if self._live is not self.client.nc or now >= self._synced_until:
            # Asked of the stream when not listening, and every few seconds; in between the
            # waiter's subscription keeps them, from each published message's headers.
            self._heads_seen = self.client.call(self._heads, 10.0)
            self._synced_until = now + _RESYNC
        return dict(self._heads_seen)

    def seen(self, headers: dict[str, str] | None) -> None:
        """A message was published (the waiter saw it): its partition's head moves there."""
        try:
            partition = int((headers or {})["Es-Partition"])
            position = int((headers or {})["Es-Position"])
        except (KeyError, ValueError):
            self._synced_until = 0.0  # not the relay's: ask the stream next time
            return
        if position > self._heads_seen.get(partition, 0):
            self._heads_seen[partition] = position

    async def _heads(self) -> dict[int, int]:
        """Every partition's last message, asked for all at once."""
        info = await self.client.js.stream_info(
            self.stream, subjects_filter=f"{self.subject_prefix}.*"
        )
        partitions = sorted(
            int(subject.rsplit(".", 1)[1])
            for subject in (info.state.subjects or {})
            if subject.rsplit(".", 1)[1].isdigit()
        )
        if partitions and self.partitions is not None and partitions[-1] >= self.partitions:
            raise relay.SinkMisconfigured(
                f"stream {self.stream} holds partition {partitions[-1]}, but the read model's"
                f" store has {self.partitions} partitions: create it with as many partitions as"
                " the relayed store (eventsource db upgrade --partitions N)",
                setting="partitions",
            )
        tails = await asyncio.gather(
            *(
                relay.last_message(
                    self.client, self.stream, relay.subject_for(self.subject_prefix, p)
                )
                for p in partitions
            )
        )
        heads: dict[int, int] = {}
        for partition, tail in zip(partitions, tails, strict=True):
            if tail is None:
                continue
            try:
                heads[partition] = relay.record_from_message(*tail).position
            except relay.MalformedMessage:
                heads[partition] = _UNKNOWN_HEAD
        return heads

    # -- batches ---------------------------------------------------------------------------

    def read(
        self, conn: psycopg.Connection[Any], partition: int, after: int, limit: int
    ) -> list[RecordedEvent]:
        """Up to ``limit`` events of ``partition`` after ``after``, dense, in order."""
        del conn  # the checkpoint is the worker's; the events come from the stream
        with self._lock:
            return self.client.call(
                lambda: self._read(partition, after, limit), self.read_timeout + 10.0
            )

    async def _read(self, partition: int, after: int, limit: int) -> list[RecordedEvent]:
        """Read from the partition's consumer, (re)created where ``after`` says."""
        subject = relay.subject_for(self.subject_prefix, partition)
        cursor = self._cursors.get(partition)
        if cursor is not None and (cursor.after != after or cursor.sub._conn is not self.client.nc):
            await self._forget(partition)
            cursor = None
        if cursor is None:
            seq = await self._start(subject, after)
            api = self.client.nats.js.api
            sub = await self.client.js.subscribe(
                subject,
                stream=self.stream,
                ordered_consumer=True,
                config=api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq
                ),
                pending_msgs_limit=max(1000, limit * 4),
            )
            cursor = self._cursors[partition] = _Cursor(after, sub)
        try:
            return await self._take(cursor, partition, limit)
        except BaseException:
            await self._forget(partition)
            raise

    async def _take(self, cursor: _Cursor, partition: int, limit: int) -> list[RecordedEvent]:
        """Up to ``limit`` events from the consumer, waiting up to the read timeout for the
        first one only."""
        out: list[RecordedEvent] = []
        expected = cursor.after + 1
        head = self._heads_seen.get(partition, 0)
        if head > cursor.after:
            limit = min(limit, head - cursor.after)  # what is there: no wait for more
        timeout = self.read_timeout
        while len(out) < limit:
            try:
                msg = await cursor.sub.next_msg(timeout=timeout)
            except (TimeoutError, self.client.nats.errors.TimeoutError):
                break
            timeout = 0.25  # the rest of a batch follows at once
            try:
                record = relay.record_from_message(msg.headers, msg.data)
            except relay.MalformedMessage:
                if not out:
                    raise
                # Apply what came before it; the next batch starts with it, and fails.
                self._cursors.pop(partition, None)
                await cursor.sub.unsubscribe()
                break
            if record.partition != partition:
                raise relay.MalformedMessage(
                    f"a message on {msg.subject} is of partition {record.partition}"
                )
            if record.position < expected:
                continue  # published twice (after the duplicate window): applied once
            if record.position > expected:
                raise relay.MalformedMessage(
                    f"positions {expected} to {record.position - 1} of partition {partition}"
                    f" are missing from stream {self.stream}"
                )
            out.append(record)
            expected += 1
        cursor.after = expected - 1
        return out

    async def _start(self, subject: str, after: int) -> int:
        """The first stream sequence whose message on ``subject`` is after ``after``.

        Positions grow with the sequence along a subject, so a binary search over the
        stream's sequences finds it; ``NotFound`` past the subject's last message.
        """
        info = await self.client.js.stream_info(self.stream)
        low, high = info.state.first_seq, info.state.last_seq + 1
        errors = self.client.nats.js.errors
        while low < high:
            middle = (low + high) // 2
            try:
                msg = await self.client.js.get_msg(
                    self.stream, seq=middle, subject=subject, next=True
                )
            except errors.NotFoundError:
                high = middle
                continue
            try:
                found = relay.record_from_message(dict(msg.headers or {}), bytes(msg.data or b""))
            except relay.MalformedMessage:
                high = middle  # not the relay's: start before it (the batch will say so)
                continue
            if found.position > after:
                high = middle
            else:
                low = msg.seq + 1
        return max(int(low), 1)

    async def _forget(self, partition: int) -> None:
        """Drop a partition's consumer."""
        cursor = self._cursors.pop(partition, None)
        if cursor is not None:
            with suppress(Exception):  # a dead connection's subscription
                await cursor.sub.unsubscribe()

    # -- waiting and outages ---------------------------------------------------------------

    def waiter(self, log: Any) -> _Waiter:
        """Wakes the worker on every message published to the stream's subjects."""
        return _Waiter(self, log)

    def is_outage(self, exc: BaseException) -> bool:
        """Whether NATS could not be reached (waited out like a database outage)."""
        while exc is not None:
            if isinstance(exc, relay.SinkUnavailable):
                return True
            exc = exc.__cause__  # type: ignore[assignment]
        return False

    def close(self) -> None:
        """Disconnect."""
        self._cursors.clear()
        self.client.close()


class _Waiter:
    """A plain NATS subscription to ``<prefix>.*`` that wakes an idle worker."""

    def __init__(self, source: JetStreamSource, log: Any) -> None:
        self._source = source
        self._log = log
        self._woken = threading.Event()
        self._nc: Any = None

    def open(self) -> bool:
        """Subscribe on the source's connection (again after it was replaced)."""
        client = self._source.client
        if self._nc is not None and self._nc is client.nc and client.connected:
            return True

        async def subscribe() -> None:
            async def woken(msg: Any) -> None:
                self._source.seen(msg.headers)
                self._woken.set()

            await client.nc.subscribe(f"{self._source.subject_prefix}.*", cb=woken)
            self._source._live = client.nc  # listening from now on: heads follow messages
            self._source._synced_until = 0.0

        try:
            client.call(subscribe, 5.0)
        except relay.SinkUnavailable:
            self._nc = None
            return False
        self._nc = client.nc
        return True

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Sleep until a message, ``stop`` or the timeout; True after a (re)subscription."""
        if not (self._nc is not None and self._nc is self._source.client.nc) and self.open():
            return True
        remaining = timeout
        while remaining > 0 and not stop.is_set():
            step = min(remaining, 0.25)
            if self._woken.wait(step):
                self._woken.clear()
                return True
            remaining -= step
        return False

    def close(self) -> None:
        """Nothing to close: the subscription ends with the source's connection."""
