"""The publish acknowledgements of one NATS connection, for one window at a time.

Every message of a window is published with a reply subject ``<inbox>.<token>`` under one
inbox of the connection; JetStream answers each on it. Answers are counted as they are read
off the socket: a plain answer (no headers) of the inbox's subscription is taken by a hook on
the client's message dispatch, without building a message object or waking a task for it,
as a relay takes tens of thousands a second; any other answer (a status such as "no
responders") comes through the subscription's callback.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from typing import Any

__all__ = ["Acks"]


class Acks:
    """The acknowledgements of the window in hand on connection ``nc``, by token."""

    def __init__(self, nc: Any, inbox: str) -> None:
        """Acknowledgements of ``nc`` under ``inbox`` (``start`` subscribes)."""
        self.nc = nc
        self.reply = f"{inbox}.".encode()
        self._cut = len(self.reply)
        self._first = 1  # the first token of the window in hand
        self._next = 1  # the token of the next message
        self._got = bytearray()  # per token of the window: whether it was answered
        self._count = 0
        self._errors: dict[int, BaseException] = {}
        self._done = asyncio.Event()

    @classmethod
    async def start(cls, nc: Any) -> Acks:
        """Subscribe to a fresh inbox of ``nc`` for acknowledgements."""
        acks = cls(nc, nc.new_inbox())
        sub = await nc.subscribe(f"{acks.reply.decode()}*", cb=acks._received)
        dispatch = getattr(nc, "_process_msg", None)
        if dispatch is not None:  # else every answer comes through the callback
            sid = sub._id

            async def hook(s: int, subject: bytes, reply: bytes, data: bytes, hdr: Any) -> None:
                if s == sid and not hdr:
                    acks._answer(int(subject[acks._cut :]), data)
                else:
                    await dispatch(s, subject, reply, data, hdr)

            nc._process_msg = hook
        return acks

    def begin(self) -> int:
        """Start a window (later answers to earlier ones are ignored); its first token."""
        self._first = self._next
        self._got = bytearray()
        self._count = 0
        self._errors = {}
        self._done.clear()
        return self._first

    def expect(self, count: int) -> None:
        """The window's messages took ``count`` tokens from its first one."""
        self._next = self._first + count
        self._got = bytearray(count)
        if count == 0:
            self._done.set()

    def _answer(self, token: int, data: bytes) -> None:
        """JetStream's answer to the message with ``token``."""
        index = token - self._first
        if index < 0 or index >= len(self._got) or self._got[index]:
            return  # of an earlier window, or twice
        self._got[index] = 1
        if b'"error"' in data:
            try:
                answer = json.loads(data)
                what = answer["error"].get("description") or answer["error"]
            except (ValueError, KeyError, AttributeError):
                what = repr(data[:200])
            self._errors[token] = RuntimeError(f"JetStream refused the message: {what}")
        self._count += 1
        if self._count >= len(self._got):
            self._done.set()

    async def _received(self, msg: Any) -> None:
        """An answer with headers: a status instead of an acknowledgement."""
        token = int(msg.subject.rsplit(".", 1)[1])
        status = (msg.headers or {}).get("Status")
        if status:
            index = token - self._first
            if 0 <= index < len(self._got) and not self._got[index]:
                self._errors[token] = RuntimeError(f"no stream answered (status {status})")
            self._answer(token, b"")
        else:
            self._answer(token, msg.data)

    async def wait(self, seconds: float) -> None:
        """Until every message of the window was answered, or for ``seconds`` at most."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), seconds)

    def outcome(self, token: int) -> BaseException | None:
        """The error of the message with ``token`` (a timeout if no answer came)."""
        if not self._got[token - self._first]:
            return TimeoutError("no acknowledgement within the ack timeout")
        return self._errors.get(token)
