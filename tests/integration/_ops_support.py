"""A store in trouble for the operations page's tests: a partition stopped on a poison event
whose error holds hostile text, a dead command with the same, and the token to act with."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

with warnings.catch_warnings():
    # Starlette's test client now prefers the httpx2 fork; httpx (installed) works the same.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

import projections
from eventsource import NO_STREAM, Command, CommandQueue, EventStore, RecordedEvent
from eventsource.testing import drain
from projections import Projection, handles
from tests.domain import Deposited, Opened

TOKEN = "operator-token-0123456789"
HOSTILE = "<script>window.pwned=1</script>"
POISON_OWNER = f"mallory {HOSTILE}"
FAST: dict[str, Any] = {
    "lease_ttl": 2.0,
    "heartbeat_interval": 0.2,
    "poll_interval": 0.1,
    "max_attempts": 1,
    "retry_delays": (0.01,),
}


class Fragile(Projection):
    """Counts events; rejects the opening of POISON_OWNER's account unless ``fixed``."""

    name = "ops.fragile"
    fixed: ClassVar[bool] = False
    seen: ClassVar[list[str]] = []

    @handles(Opened)
    def on_opened(self, event: Opened, record: RecordedEvent, tx: Any) -> None:
        if event.owner == POISON_OWNER and not type(self).fixed:
            raise ValueError(f"cannot open an account for {event.owner}")
        type(self).seen.append(record.stream_id)

    @handles(Deposited)
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Any) -> None:
        type(self).seen.append(record.stream_id)


class Notify(Command, name="ops.Notify"):
    """A command whose handler fails while ``Trouble.command_fixed`` is false."""

    text: str


@dataclass
class Trouble:
    """What ``make_trouble`` left: the stopped partition and the dead command's id."""

    partition: int
    poison_position: int
    command_id: int


def make_trouble(store: EventStore, streams: int = 6) -> Trouble:
    """Append a few streams and a poison one, run Fragile until its partition stops, and
    enqueue a command that dies on its first attempt with a hostile error."""
    Fragile.fixed = False
    for i in range(streams):
        store.append(f"acc-{i}", [Opened(owner=f"owner {i}")], expected_version=NO_STREAM)
    poison = store.append(
        f"evil-{HOSTILE}", [Opened(owner=POISON_OWNER)], expected_version=NO_STREAM
    )
    projections.run(store, [Fragile()], stop_when_caught_up=True, **FAST)
    return Trouble(poison.partition, poison.position, dead_command(store))


def dead_command(store: EventStore) -> int:
    """Enqueue a command to the ``mail`` queue that dies on its first attempt; its id."""
    queue = CommandQueue(store)
    enqueued = queue.enqueue(Notify(text=HOSTILE), queue="mail", max_attempts=1)
    assert enqueued.id is not None
    drain(queue, handlers={Notify: _failing}, queues=["mail"])
    return enqueued.id


def _failing(command: Notify, ctx: Any) -> None:
    """The command's handler before the fix."""
    raise RuntimeError(f"mail server said {command.text}")


def run_fixed_command(store: EventStore, handled: list[str]) -> None:
    """Run the queue's pending commands with a handler that works."""
    drain(
        CommandQueue(store),
        handlers={Notify: lambda command, ctx: handled.append(command.text)},
        queues=["mail"],
    )


_CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(client: TestClient, path: str = "/") -> str:
    """Load ``path`` so that the client holds a CSRF cookie; the token in its forms."""
    page = client.get(path)
    match = _CSRF_FIELD.search(page.text)
    if match is None:  # a read-only page has no forms: the cookie holds it all the same
        return str(client.cookies["ops_csrf"])
    return match.group(1)


def sign_in(client: TestClient, token: str = TOKEN) -> Any:
    """Sign in with ``token`` through the page's form; the response (303 when it worked)."""
    return client.post(
        "/signin", data={"token": token, "csrf": csrf_of(client)}, follow_redirects=False
    )


Poll = Callable[[], bool]
