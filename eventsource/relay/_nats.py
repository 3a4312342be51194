"""The NATS JetStream sink: the relay's messages go to one stream, a subject per partition.

nats-py is asynchronous; the relay's worker is a thread. The sink runs the client on an
event loop of its own, on a daemon thread, and the worker calls into it and waits
(``asyncio.run_coroutine_threadsafe``).

The client never reconnects by itself (``allow_reconnect=False``): after a lost connection,
what it had buffered would be sent on the new one, after messages that were lost in flight,
and a partition's messages could be stored out of order or with a hole. The sink reconnects
at the next call instead, and the relay republishes from its checkpoint (JetStream drops the
re-publications by ``Nats-Msg-Id`` within the stream's duplicate window).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from eventsource._logging import get_logger
from eventsource.relay._errors import MalformedMessage, SinkMisconfigured, SinkUnavailable
from eventsource.relay._messages import (
    RelayMessage,
    check_stream_name,
    check_subject_prefix,
    record_from_message,
    subject_for,
)
from eventsource.relay._sink import Acked

__all__ = ["NatsSink", "check_nats_url", "nats_module", "safe_nats_url"]

T = TypeVar("T")
log = get_logger("eventsource.relay")

INSTALL_HINT = "the relay needs nats-py: pip install 'eventsource-pg[nats]'"
_SCHEMES = ("nats", "tls", "ws", "wss")


def nats_module() -> Any:
    """The ``nats`` package; ImportError saying how to install it when it is missing."""
    try:
        import nats  # noqa: PLC0415 - an optional dependency
        import nats.js.api  # noqa: PLC0415
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return nats


def check_nats_url(url: object) -> str:
    """A NATS server URL (``nats://host:port``, also ``tls://``, ``ws://``, ``wss://``)."""
    if not isinstance(url, str) or not url or any(c.isspace() for c in url):
        raise ValueError(f"NATS URL {url!r} is not valid: expected nats://host:port")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"NATS URL {safe_nats_url(url)!r} is not valid: {exc}") from None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ValueError(
            f"NATS URL {safe_nats_url(url)!r} is not valid: expected nats://host:port"
            f" (schemes {', '.join(_SCHEMES)})"
        )
    del port
    return url


def safe_nats_url(url: str) -> str:
    """``url`` with its password (or token) masked, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = "***" if parts.password is None else f"{parts.username}:***"
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, ""))


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
        self.url = check_nats_url(url)
        self.stream = check_stream_name(stream)
        self.subject_prefix = check_subject_prefix(subject_prefix)
        self.duplicate_window = float(duplicate_window)
        self.ack_timeout = float(ack_timeout)
        self.connect_timeout = float(connect_timeout)
        self._nats = nats_module()
        self._nc: Any = None
        self._js: Any = None
        self._max_payload = 1024 * 1024
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._last_error: BaseException | None = None

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

    # -- the event loop --------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the sink's loop and wait for it (started on first use)."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="nats-sink", daemon=True
            )
            self._thread.start()
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise SinkUnavailable(f"NATS did not answer within {timeout:g} s") from None

    # -- the Sink protocol -----------------------------------------------------------------

    def open(self) -> None:
        """Connect (if not connected) and create or check the stream."""
        if self._nc is not None and self._nc.is_connected:
            return
        self._drop()
        try:
            self._run(self._connect(), self.connect_timeout + self.ack_timeout)
        except SinkUnavailable:
            self._drop()
            raise
        except SinkMisconfigured:
            self._drop()
            raise
        except Exception as exc:
            self._drop()
            raise self._unavailable(exc) from exc

    async def _connect(self) -> None:
        """Connect with reconnection off, then ensure the stream."""

        async def noted(exc: Exception) -> None:
            self._last_error = exc  # the relay logs what matters, once

        nc = await self._nats.connect(
            self.url,
            allow_reconnect=False,
            connect_timeout=self.connect_timeout,
            max_reconnect_attempts=1,  # one more try at once, then NoServersError
            reconnect_time_wait=0.05,
            error_cb=noted,
            name="eventsource-relay",
        )
        self._nc = nc
        self._max_payload = nc.max_payload
        self._js = nc.jetstream(timeout=self.ack_timeout, publish_async_max_pending=100_000)
        await self._ensure_stream()

    async def _ensure_stream(self) -> None:
        """Create the stream, or check that the existing one fits (``SinkMisconfigured``)."""
        api = self._nats.js.api
        subjects = f"{self.subject_prefix}.*"
        jsm = self._js
        try:
            info = await jsm.stream_info(self.stream)
        except self._nats.js.errors.NotFoundError:
            config = api.StreamConfig(
                name=self.stream,
                subjects=[subjects],
                storage=api.StorageType.FILE,
                duplicate_window=self.duplicate_window,
            )
            await jsm.add_stream(config)
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
        self.open()
        try:
            acked = self._run(self._publish(window), self.ack_timeout * 2 + 5)
        except SinkUnavailable:
            self._drop()
            raise
        except Exception as exc:
            self._drop()
            raise self._unavailable(exc) from exc
        if any(a.error is not None for a in acked.values()):
            self._drop()  # nothing more may follow a failed message on this connection
        return acked

    async def _publish(self, window: Mapping[int, Sequence[RelayMessage]]) -> dict[int, Acked]:
        """Send everything, then gather the acknowledgements of each partition in order."""
        sent: dict[int, list[tuple[RelayMessage, Awaitable[Any]]]] = {}
        refused: dict[int, BaseException] = {}
        expected = {"Nats-Expected-Stream": self.stream}
        for partition, messages in window.items():
            futures = sent[partition] = []
            for message in messages:
                size = len(message.payload) + sum(
                    len(k) + len(v) + 4 for k, v in message.headers.items()
                )
                if size > self._max_payload:
                    refused[partition] = MalformedMessage(
                        f"event {message.msg_id} at {partition}:{message.position} is"
                        f" {size} bytes with its headers, over the limit of {self._max_payload}"
                    )
                    break
                future = await self._js.publish_async(
                    message.subject, message.payload, headers={**message.headers, **expected}
                )
                futures.append((message, future))
        await self._nc.flush(timeout=self.ack_timeout)
        pending = [f for futures in sent.values() for _, f in futures]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=self.ack_timeout)  # type: ignore[type-var]
            for future in late:
                future.cancel()  # type: ignore[attr-defined]
        result: dict[int, Acked] = {}
        for partition, futures in sent.items():
            position: int | None = None
            error: BaseException | None = refused.get(partition)
            for message, future in futures:
                exc = _failure(future)
                if exc is not None:
                    error = exc
                    break
                position = message.position
            result[partition] = Acked(position, error)
        return result

    def last_position(self, partition: int) -> int:
        """The position of the last message the stream holds for ``partition`` (0: none)."""
        self.open()
        try:
            raw = self._run(self._last(partition), self.ack_timeout + 1)
        except SinkUnavailable:
            self._drop()
            raise
        except Exception as exc:
            self._drop()
            raise self._unavailable(exc) from exc
        if raw is None:
            return 0
        headers, payload = raw
        record = record_from_message(headers, payload)
        if record.partition != partition:
            raise MalformedMessage(
                f"the last message on {subject_for(self.subject_prefix, partition)} is of"
                f" partition {record.partition}"
            )
        return record.position

    async def _last(self, partition: int) -> tuple[dict[str, str], bytes] | None:
        """The headers and payload of the subject's last message, or None."""
        try:
            msg = await self._js.get_last_msg(
                self.stream, subject_for(self.subject_prefix, partition)
            )
        except self._nats.js.errors.NotFoundError:
            return None
        return dict(msg.headers or {}), bytes(msg.data or b"")

    def close(self) -> None:
        """Disconnect and stop the loop (idempotent)."""
        self._drop()
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        if not loop.is_running():
            loop.close()

    # -- failures --------------------------------------------------------------------------

    def _drop(self) -> None:
        """Close and forget the connection (errors of a dead one are ignored)."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is None or self._loop is None or self._loop.is_closed():
            return
        with suppress(Exception):  # a dead connection's close may fail
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(nc.close(), 2.0), self._loop).result(
                3
            )

    def _unavailable(self, exc: BaseException) -> SinkUnavailable:
        """The one-line outage error for ``exc``."""
        what = _line(exc)
        if self._last_error is not None and self._last_error is not exc:
            what = f"{what} ({_line(self._last_error)})"
            self._last_error = None
        return SinkUnavailable(f"NATS at {safe_nats_url(self.url)} unavailable: {what}")


def _line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failure(future: Any) -> BaseException | None:
    """The error of a publish's acknowledgement (a timeout if it never came)."""
    if future.cancelled() or not future.done():
        return TimeoutError("no acknowledgement within the ack timeout")
    exc: BaseException | None = future.exception()
    return exc


async def _cancel_tasks() -> None:
    """Cancel the loop's other tasks (the client's readers of dropped connections)."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
