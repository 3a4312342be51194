"""NATS JetStream for the relay's tests: the shared server, private servers, stream reading.

Every test uses streams and subjects of its own (``unique_target``) and deletes them after,
so tests never see each other's messages. Outage tests start a private ``nats-server`` of
their own on a free port, which they may stop and restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    import nats
    import nats.js.api
except ImportError:  # the fixtures skip their tests
    nats = None

SHARED_URL = "nats://127.0.0.1:4222"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


@dataclass(frozen=True)
class Message:
    """A stored message: stream sequence, subject, headers, payload."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


def reachable(url: str) -> bool:
    """Whether a NATS server answers at ``url`` (host and port only)."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def unique_target() -> tuple[str, str]:
    """A fresh (stream name, subject prefix) pair."""
    token = uuid.uuid4().hex[:12]
    return f"T_{token}", f"t{token}"


async def _read(url: str, stream: str) -> list[Message]:
    """Every message of ``stream``, in stream order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        total, first = info.state.messages, info.state.first_seq
        out: list[Message] = []
        if total == 0:
            return out
        api = nats.js.api
        sub = await js.pull_subscribe(
            info.config.subjects[0],
            stream=stream,
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE),
        )
        while len(out) < total:
            for msg in await sub.fetch(min(1000, total - len(out)), timeout=10):
                meta = msg.metadata
                out.append(
                    Message(meta.sequence.stream, msg.subject, dict(msg.headers or {}), msg.data)
                )
        assert out[0].seq >= first
        return out
    finally:
        await nc.close()


def read_stream(url: str, stream: str) -> list[Message]:
    """Every message of ``stream``, in stream order."""
    return asyncio.run(_read(url, stream))


async def _call(url: str, fn: Any) -> Any:
    nc = await nats.connect(url)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


def jetstream(url: str, fn: Any) -> Any:
    """Run ``await fn(js)`` with a JetStream context of a fresh connection to ``url``."""
    return asyncio.run(_call(url, fn))


def delete_stream(url: str, stream: str) -> None:
    """Delete ``stream`` if it exists."""

    async def delete(js: Any) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(stream)

    if reachable(url):
        jetstream(url, delete)


def free_port() -> int:
    """A TCP port that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateNats:
    """A nats-server with JetStream of this test's own, on a free port, stoppable."""

    def __init__(self, store_dir: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store_dir = store_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [
                NATS_SERVER,
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.store_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not reachable(self.url):
            assert time.monotonic() < deadline, "private nats-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server (SIGKILL) and wait for it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def nats_url() -> str:
    """The shared NATS server (skips the test when it is not running)."""
    if nats is None:
        pytest.skip("nats-py is not installed")
    if not reachable(SHARED_URL):
        pytest.skip("no NATS server at 127.0.0.1:4222")
    return SHARED_URL


@pytest.fixture
def target(nats_url: str) -> Iterator[tuple[str, str]]:
    """A fresh (stream, prefix) on the shared server, deleted after the test."""
    stream, prefix = unique_target()
    yield stream, prefix
    delete_stream(nats_url, stream)


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    """A private nats-server with JetStream, stopped after the test."""
    if nats is None or not Path(NATS_SERVER).exists():
        pytest.skip("nats-server is not installed")
    server = PrivateNats(tmp_path / "jetstream")
    server.start()
    yield server
    server.stop()
