"""A NATS connection driven from worker threads: the client on an event loop of its own.

nats-py is asynchronous; the relay's and the projections' workers are threads. A
``NatsClient`` runs the client on a private event loop, on a daemon thread, and worker threads
call into it and wait (``asyncio.run_coroutine_threadsafe``).

The client never reconnects by itself (``allow_reconnect=False``): after a lost connection,
what it had buffered would be sent on the new one, after messages lost in flight, and a
partition's messages could be stored out of order or with a hole. It reconnects at the next
call instead. Every failure that is not one of the framework's own errors means the server
could not be used: the connection is dropped and the call raises ``SinkUnavailable``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from eventsource._errors import EventSourceError, first_line
from eventsource.relay._errors import SinkUnavailable

__all__ = ["INSTALL_HINT", "NatsClient", "check_nats_url", "nats_module", "safe_nats_url"]

T = TypeVar("T")

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
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ValueError(f"NATS URL {safe_nats_url(url)!r} is not valid: {exc}") from None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ValueError(
            f"NATS URL {safe_nats_url(url)!r} is not valid: expected nats://host:port"
            f" (schemes {', '.join(_SCHEMES)})"
        )
    return url


def safe_nats_url(url: str) -> str:
    """``url`` with its password (or token) masked, for messages and logs."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if port is not None:
        host = f"{host}:{port}"
    user = "***" if parts.password is None else f"{parts.username}:***"
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, ""))


class NatsClient:
    """One NATS connection on a private event loop, for calls from worker threads.

    ``on_connect(client)`` runs on the loop after each (re)connection (to create or check a
    stream); ``call(fn, timeout)`` connects if needed and runs ``await fn()``.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        connect_timeout: float = 2.0,
        request_timeout: float = 10.0,
        on_connect: Callable[[NatsClient], Awaitable[None]] | None = None,
    ) -> None:
        """A client of the server at ``url`` (nothing connects before the first call)."""
        self.url = check_nats_url(url)
        self.name = name
        self.connect_timeout = float(connect_timeout)
        self.request_timeout = float(request_timeout)
        self.nats = nats_module()
        self.nc: Any = None
        self.js: Any = None
        self._on_connect = on_connect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._last_error: BaseException | None = None

    @property
    def connected(self) -> bool:
        """Whether the connection is up (as far as the client knows)."""
        return self.nc is not None and bool(self.nc.is_connected)

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
        """Connect if needed, then run ``await fn()`` on the loop and wait for its result.

        The framework's own errors pass through; any other failure drops the connection and
        raises ``SinkUnavailable`` (one line, the URL without its password).
        """
        try:
            if not self.connected:
                self.drop()
                self._run(self._connect(), self.connect_timeout + self.request_timeout)
            return self._run(fn(), timeout)
        except SinkUnavailable:
            self.drop()
            raise
        except EventSourceError:
            raise
        except Exception as exc:
            self.drop()
            raise self.unavailable(exc) from exc

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop (started on first use) and wait up to ``timeout``."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name=f"nats-{self.name}", daemon=True
            )
            self._thread.start()
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise SinkUnavailable(
                f"NATS at {safe_nats_url(self.url)} did not answer within {timeout:g} s"
            ) from None

    async def _connect(self) -> None:
        """Connect with reconnection off, then run ``on_connect``."""

        async def noted(exc: Exception) -> None:
            self._last_error = exc  # reported with the failure that follows, once

        self.nc = await self.nats.connect(
            self.url,
            allow_reconnect=False,
            connect_timeout=self.connect_timeout,
            max_reconnect_attempts=1,  # one more try at once, then NoServersError
            reconnect_time_wait=0.05,
            error_cb=noted,
            name=f"eventsource-{self.name}",
        )
        self.js = self.nc.jetstream(timeout=self.request_timeout, publish_async_max_pending=100_000)
        if self._on_connect is not None:
            await self._on_connect(self)

    def drop(self) -> None:
        """Close and forget the connection (errors of a dead one are ignored)."""
        nc, self.nc, self.js = self.nc, None, None
        if nc is None or self._loop is None or self._loop.is_closed():
            return
        with suppress(Exception):  # a dead connection's close may fail
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(nc.close(), 2.0), self._loop).result(
                3
            )

    def close(self) -> None:
        """Disconnect and stop the loop (idempotent)."""
        self.drop()
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

    def unavailable(self, exc: BaseException) -> SinkUnavailable:
        """The one-line outage error for ``exc``."""
        what = first_line(exc)
        if self._last_error is not None and self._last_error is not exc:
            what = f"{what} ({first_line(self._last_error)})"
            self._last_error = None
        return SinkUnavailable(f"NATS at {safe_nats_url(self.url)} unavailable: {what}")


async def _cancel_tasks() -> None:
    """Cancel the loop's other tasks (the client's readers of dropped connections)."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
