"""A handler that kills the thread it runs on, for `eventsource worker run` in a test.

``Crash`` raises a ``BaseException`` that is not an ``Exception`` (like a library calling
``sys.exit`` or a bug in the worker itself): the slot thread running it dies.
"""

from __future__ import annotations

from eventsource import Command, CommandContext, handler


class Crash(Command, name="acceptance.Crash", queue="crash"):
    """Kills the worker thread that runs it."""

    n: int = 0


class ThreadKiller(BaseException):
    """Not an Exception: no handler-error path catches it."""


@handler(Crash)
def crash(command: Crash, ctx: CommandContext) -> None:
    raise ThreadKiller(f"slot thread killed by command {ctx.command_id}")
