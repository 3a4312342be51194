"""The check that a command worker's queues are served: a worker none of whose queues any
loaded handler serves, and where no command is stored, is refused (most often a typo)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eventsource.commands._command import HandlerSpec, registered_handlers
from eventsource.commands._queue import CommandQueue
from eventsource.store import EventStore

__all__ = ["check_queues_served"]


def check_queues_served(
    store: EventStore, queues: Sequence[str], handlers: Mapping[str, HandlerSpec] | None = None
) -> None:
    """Refuse a worker whose queues nothing serves: ValueError naming the served queues.

    A queue is served when one of ``handlers`` (by default those registered in this process)
    handles a command class that defaults to it (``class C(Command, queue="mail")``, else
    ``default``), or when the database holds commands in it (pending, running or dead).
    ``enqueue(cmd, queue=...)`` may put a command of any type in any queue, so a queue beside
    a served one is not refused (a worker's private queue, empty when it starts); only a
    worker none of whose queues is served is. With no handlers at all the worker itself
    refuses to start, with its own message.
    """
    found = registered_handlers() if handlers is None else handlers
    served = sorted({spec.command.default_queue for spec in found.values()})
    if not found or any(name in served for name in queues):
        return
    commands = CommandQueue(store)
    if any(commands.list(("pending", "running", "dead"), queue=name, limit=1) for name in queues):
        return
    raise ValueError(
        f"no loaded handler serves {'queue' if len(queues) == 1 else 'queues'}"
        f" {', '.join(map(repr, queues))}: the handlers' commands go to"
        f" {', '.join(map(repr, served))}, and no command is stored there;"
        " check the queues and the modules given"
    )
