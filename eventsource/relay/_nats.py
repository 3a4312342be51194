"""The NATS JetStream sink: the relay's messages go to one stream, a subject per partition.

The sink publishes a window asynchronously (every message sent before any acknowledgement is
awaited) on a ``NatsClient`` connection that never re-sends a buffer after a reconnect, so
what the stream stores of a partition is always a prefix of what it was sent. After a failed
window the connection is dropped, and the relay republishes from its checkpoint: JetStream
drops the re-publications by ``Nats-Msg-Id`` within the stream's duplicate window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eventsource._logging import get_logger
from eventsource.relay._acks import Acks
from eventsource.relay._client import NatsClient, safe_nats_url
from eventsource.relay._errors import MalformedMessage, SinkMisconfigured, SinkUnavailable
from eventsource.relay._messages import (
    RelayMessage,
    check_stream_name,
    check_subject_prefix,
    record_from_message,
    subject_for,
)
from eventsource.relay._sink import Acked

__all__ = ["NatsSink", "Sent", "last_message"]

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
        # As a Sink: its name is the stream's, its dedupe window the stream's duplicate window.
        self.name = self.stream = check_stream_name(stream)
        self.subject_prefix = check_subject_prefix(subject_prefix)
        self.min_dedupe_window = self.duplicate_window = float(duplicate_window)
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
        self._acks: Acks | None = None
        self._expected = f"Nats-Expected-Stream: {self.stream}\r\n\r\n".encode()

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
        return self.send(window).wait()

    def send(self, window: Mapping[int, Sequence[RelayMessage]]) -> Sent:
        """Send the whole window without waiting for its acknowledgements (``Sent.wait``).

        The messages are framed here (HPUB with a reply subject per message, under one inbox
        of this connection) and handed to the client in one write, which is many times
        faster than one ``publish`` call per message.
        """
        return self.client.call(lambda: self._send(window), self.ack_timeout + 5)

    async def _send(self, window: Mapping[int, Sequence[RelayMessage]]) -> Sent:
        """``send`` on the client's loop."""
        nc = self.client.nc
        acks = self._acks
        if acks is None or acks.nc is not nc:
            acks = self._acks = await Acks.start(nc)
        first = token = acks.begin()
        reply, expected, limit = acks.reply, self._expected, self._max_payload
        extra = len(expected)
        sent: dict[int, tuple[Sequence[RelayMessage], int, int]] = {}
        refused: dict[int, BaseException] = {}
        frames: list[bytes] = []
        append = frames.append
        for partition, messages in window.items():
            if not messages:
                continue
            start = token
            subject = messages[0].subject.encode()
            for message in messages:
                size = len(message.header) + extra
                total = size + len(message.payload)
                if total > limit:
                    refused[partition] = MalformedMessage(
                        f"event {message.msg_id} at {partition}:{message.position} is"
                        f" {total} bytes with its headers, over the limit of {limit}"
                    )
                    break
                line = b"HPUB %b %b%d %d %d\r\n" % (subject, reply, token, size, total)
                append(line + message.header + expected + message.payload + b"\r\n")
                token += 1
            sent[partition] = (messages, start, token - start)
        acks.expect(token - first)
        if frames:
            await nc._send_command(b"".join(frames))
            await nc._flush_pending()
        return Sent(self, acks, sent, refused)

    async def _settle(self, sent: Sent) -> dict[int, Acked]:
        """How far each partition of a sent window was acknowledged (waiting for them)."""
        acks = sent.acks
        if acks is not self._acks or acks.nc is not self.client.nc:
            raise SinkUnavailable(
                f"NATS at {safe_nats_url(self.url)} unavailable: the connection was lost"
            )
        await acks.wait(self.ack_timeout)
        result: dict[int, Acked] = {}
        for partition, (messages, start, count) in sent.sent.items():
            position: int | None = None
            error: BaseException | None = sent.refused.get(partition)
            for i in range(count):
                exc = acks.outcome(start + i)
                if exc is not None:
                    error = exc
                    break
                position = messages[i].position
            result[partition] = Acked(position, error)
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


class Sent:
    """A window sent to the stream, its acknowledgements still to come (``wait``)."""

    def __init__(
        self,
        sink: NatsSink,
        acks: Acks,
        sent: dict[int, tuple[Sequence[RelayMessage], int, int]],
        refused: dict[int, BaseException],
    ) -> None:
        """The window's messages by partition, with their first token and count."""
        self.sink = sink
        self.acks = acks
        self.sent = sent
        self.refused = refused

    def wait(self) -> dict[int, Acked]:
        """How far each partition was acknowledged; ``SinkUnavailable`` if the connection
        was lost (nothing of the window counts then)."""
        sink = self.sink
        if not sink.client.connected:
            raise SinkUnavailable(
                f"NATS at {safe_nats_url(sink.url)} unavailable: the connection was lost"
            )
        acked = sink.client.call(lambda: sink._settle(self), sink.ack_timeout + 5)
        if any(a.error is not None for a in acked.values()):
            sink.client.drop()  # nothing more may follow a failed message on this connection
        return acked
