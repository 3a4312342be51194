"""The NATS JetStream sink: the relay's messages go to one stream, a subject per partition.

The sink publishes a window asynchronously (every message sent before any acknowledgement is
awaited) on a ``NatsClient`` connection that never re-sends a buffer after a reconnect, so
what the stream stores of a partition is always a prefix of what it was sent. After a failed
window the connection is dropped, and the relay republishes from its checkpoint: JetStream
drops the re-publications by ``Nats-Msg-Id`` within the stream's duplicate window.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from eventsource._logging import get_logger
from eventsource.relay._client import NatsClient, safe_nats_url
from eventsource.relay._errors import MalformedMessage, SinkMisconfigured
from eventsource.relay._messages import (
    RelayMessage,
    check_stream_name,
    check_subject_prefix,
    record_from_message,
    subject_for,
)
from eventsource.relay._sink import Acked

__all__ = ["NatsSink", "last_message"]

log = get_logger("eventsource.relay")


async def last_message(
    client: NatsClient, stream: str, subject: str
) -> tuple[dict[str, str], bytes] | None:
    """The headers and payload of the last message of ``stream`` on ``subject``, or None."""
    try:
        msg = await client.js.get_last_msg(stream, subject)
    except client.nats.js.errors.NotFoundError:
        return None
    return dict(msg.headers or {}), bytes(msg.data or b"")


class NatsSink:
    """Publishes to the JetStream stream ``stream``, on subjects ``<subject_prefix>.<partition>``.

    ``duplicate_window`` (seconds): the window that a stream created here gets, and the least
    an existing one must have; ``ack_timeout``: how long a window's acknowledgements may take.

    >>> sink = NatsSink("nats://127.0.0.1:4222", stream="EVENTS", subject_prefix="events")
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = "EVENTS",
        subject_prefix: str = "events",
        duplicate_window: float = 120.0,
        ack_timeout: float = 10.0,
        connect_timeout: float = 2.0,
    ) -> None:
        """A sink to ``stream`` on the server at ``url`` (nothing connects before ``open``)."""
        self.stream = check_stream_name(stream)
        self.subject_prefix = check_subject_prefix(subject_prefix)
        self.duplicate_window = float(duplicate_window)
        self.ack_timeout = float(ack_timeout)
        self.client = NatsClient(
            url,
            name="relay",
            connect_timeout=connect_timeout,
            request_timeout=ack_timeout,
            on_connect=self._ensure_stream,
        )
        self.url = self.client.url
        self._max_payload = 1024 * 1024
        self._acks: _Acks | None = None

    @property
    def name(self) -> str:
        """The stream's name."""
        return self.stream

    @property
    def min_dedupe_window(self) -> float:
        """The duplicate window that the stream must have at least (seconds)."""
        return self.duplicate_window

    def __repr__(self) -> str:
        return f"<NatsSink {safe_nats_url(self.url)} stream={self.stream}>"

    def open(self) -> None:
        """Connect (if not connected) and create or check the stream."""
        if not self.client.connected:
            self.client.call(_nothing, self.ack_timeout)

    async def _ensure_stream(self, client: NatsClient) -> None:
        """Create the stream, or check that the existing one fits (``SinkMisconfigured``)."""
        api = client.nats.js.api
        subjects = f"{self.subject_prefix}.*"
        self._max_payload = client.nc.max_payload
        try:
            info = await client.js.stream_info(self.stream)
        except client.nats.js.errors.NotFoundError:
            config = api.StreamConfig(
                name=self.stream,
                subjects=[subjects],
                storage=api.StorageType.FILE,
                duplicate_window=self.duplicate_window,
            )
            await client.js.add_stream(config)
            log.info("stream created", stream=self.stream, subjects=subjects)
            return
        config = info.config
        if not ({subjects, f"{self.subject_prefix}.>"} & set(config.subjects or [])):
            raise SinkMisconfigured(
                f"stream {self.stream} has subjects {config.subjects}, which do not include"
                f" {subjects!r}: choose another --stream or --subject-prefix",
                setting="subjects",
            )
        if (config.duplicate_window or 0) < self.duplicate_window:
            raise SinkMisconfigured(
                f"stream {self.stream} has a duplicate_window of {config.duplicate_window or 0:g}"
                f" s; the relay needs at least {self.duplicate_window:g} s",
                setting="duplicate_window",
            )
        if config.no_ack:
            raise SinkMisconfigured(
                f"stream {self.stream} has no_ack set: the relay needs acknowledgements",
                setting="no_ack",
            )
        if config.max_msg_size and config.max_msg_size > 0:
            self._max_payload = min(self._max_payload, config.max_msg_size)

    def publish(self, window: Mapping[int, Sequence[RelayMessage]]) -> dict[int, Acked]:
        """Publish each partition's messages in order; how far each was acknowledged."""
        acked = self.client.call(lambda: self._publish(window), self.ack_timeout * 2 + 5)
        if any(a.error is not None for a in acked.values()):
            self.client.drop()  # nothing more may follow a failed message on this connection
        return acked

    async def _publish(self, window: Mapping[int, Sequence[RelayMessage]]) -> dict[int, Acked]:
        """Send the whole window, then wait for the acknowledgements of all of it.

        The messages are framed here (HPUB with a reply subject per message, under one inbox
        of this connection) and handed to the client in one write, which is many times
        faster than one ``publish`` call per message; the acknowledgements come back to one
        subscription.
        """
        acks = self._acks
        if acks is None or acks.nc is not self.client.nc:
            acks = self._acks = await _Acks.start(self.client.nc)
        sent: dict[int, list[tuple[RelayMessage, int]]] = {}
        refused: dict[int, BaseException] = {}
        frames: list[bytes] = []
        expected = f"Nats-Expected-Stream: {self.stream}\r\n".encode()
        for partition, messages in window.items():
            tokens = sent[partition] = []
            for message in messages:
                header = _header_block(message.headers, expected)
                if len(header) + len(message.payload) > self._max_payload:
                    refused[partition] = MalformedMessage(
                        f"event {message.msg_id} at {partition}:{message.position} is"
                        f" {len(header) + len(message.payload)} bytes with its headers, over"
                        f" the limit of {self._max_payload}"
                    )
                    break
                token = acks.expect()
                frames.append(_hpub(message.subject, acks.reply(token), header, message.payload))
                tokens.append((message, token))
        if frames:
            await self.client.nc._send_command(b"".join(frames))
            await self.client.nc.flush(timeout=self.ack_timeout)
            await acks.wait(self.ack_timeout)
        result: dict[int, Acked] = {}
        for partition, tokens in sent.items():
            position: int | None = None
            error: BaseException | None = refused.get(partition)
            for message, token in tokens:
                exc = acks.outcome(token)
                if exc is not None:
                    error = exc
                    break
                position = message.position
            result[partition] = Acked(position, error)
        acks.clear()
        return result

    def last_position(self, partition: int) -> int:
        """The position of the last message the stream holds for ``partition`` (0: none)."""
        subject = subject_for(self.subject_prefix, partition)
        raw = self.client.call(
            lambda: last_message(self.client, self.stream, subject), self.ack_timeout + 1
        )
        if raw is None:
            return 0
        record = record_from_message(*raw)
        if record.partition != partition:
            raise MalformedMessage(
                f"the last message on {subject} is of partition {record.partition}"
            )
        return record.position

    def close(self) -> None:
        """Disconnect and stop the client's loop (idempotent)."""
        self.client.close()


async def _nothing() -> None:
    """A call that only connects."""


def _header_block(headers: Mapping[str, str], extra: bytes) -> bytes:
    """The NATS header block of ``headers`` (the relay's own: ASCII-safe, one line each)."""
    lines = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    return b"NATS/1.0\r\n" + lines.encode() + extra + b"\r\n"


def _hpub(subject: str, reply: str, header: bytes, payload: bytes) -> bytes:
    """One HPUB frame of the NATS protocol."""
    size = len(header)
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        reply.encode(),
        size,
        size + len(payload),
        header,
        payload,
    )


class _Acks:
    """The acknowledgements of the published messages of one connection, by token."""

    def __init__(self, nc: Any, inbox: str) -> None:
        self.nc = nc
        self.inbox = inbox
        self._next = 0
        self._first = 1  # the first token of the window in hand
        self._waiting = 0
        self._outcomes: dict[int, BaseException | None] = {}
        self._done = asyncio.Event()

    @classmethod
    async def start(cls, nc: Any) -> _Acks:
        """Subscribe to a fresh inbox of ``nc`` for acknowledgements."""
        acks = cls(nc, nc.new_inbox())
        await nc.subscribe(f"{acks.inbox}.*", cb=acks._received)
        return acks

    def expect(self) -> int:
        """A token for one more message whose acknowledgement is awaited."""
        self._next += 1
        self._waiting += 1
        self._done.clear()
        return self._next

    def reply(self, token: int) -> str:
        """The reply subject of the message with ``token``."""
        return f"{self.inbox}.{token}"

    async def _received(self, msg: Any) -> None:
        """An acknowledgement (or an error) from the stream."""
        token = int(msg.subject.rsplit(".", 1)[1])
        if token < self._first or token in self._outcomes:
            return  # late: of an earlier window
        error: BaseException | None = None
        status = (msg.headers or {}).get("Status")
        if status:
            error = RuntimeError(f"no stream answered (status {status})")
        else:
            try:
                answer = json.loads(msg.data)
            except ValueError:
                answer = {"error": {"description": repr(msg.data[:200])}}
            if "error" in answer:
                what = answer["error"].get("description") or answer["error"]
                error = RuntimeError(f"JetStream refused the message: {what}")
        self._outcomes[token] = error
        if len(self._outcomes) >= self._waiting:
            self._done.set()

    async def wait(self, seconds: float) -> None:
        """Until every expected acknowledgement came, or for ``seconds`` at most."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), seconds)

    def outcome(self, token: int) -> BaseException | None:
        """The error of the message with ``token`` (a timeout if no answer came)."""
        if token not in self._outcomes:
            return TimeoutError("no acknowledgement within the ack timeout")
        return self._outcomes[token]

    def clear(self) -> None:
        """Forget this window's outcomes (later answers to it are ignored)."""
        self._outcomes.clear()
        self._waiting = 0
        self._first = self._next + 1
