"""Commands and their handlers."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from eventsource._checks import check_int, check_name, check_seconds
from eventsource._errors import EventSourceError, UnknownCommandType
from eventsource._registry import Registry
from eventsource.store import Transaction

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["Command", "CommandContext", "command_class", "handler"]

C = TypeVar("C", bound="Command")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 5
MAX_ATTEMPTS_LIMIT = 1000
MAX_KEY_LENGTH = 500  # dedupe and ordering keys (names: MAX_NAME_LENGTH of _checks)
# A handler's time limit: from a millisecond (as a worker's default_timeout) to a day (an
# attempt that runs longer is not supervised any more).
MIN_HANDLER_TIMEOUT, MAX_HANDLER_TIMEOUT = 0.001, 86400.0
# Delays and ages: a century is beyond any schedule and well within PostgreSQL's timestamps.
MAX_DELAY = 100 * 365.25 * 86400
STATUSES = ("pending", "running", "dead")
# Key of a SQLAlchemy ``Connection.info`` entry (a set) in which enqueues made in that
# connection's transaction leave their queues for its owner to announce after the commit.
ANNOUNCE_AFTER_COMMIT = "eventsource.announce_after_commit"

_registry: Registry[type[Command]] = Registry(
    "command type name", "choose another with `class {cls}(Command, name=...)`", UnknownCommandType
)
_handlers: dict[str, HandlerSpec] = {}


class Command(BaseModel):
    """Base class of commands: a frozen pydantic model with a registered type name.

    ``class SendStatement(Command, name="bank.SendStatement", queue="mail", max_attempts=3)``
    chooses the stored type name and the defaults of ``enqueue``; two classes under one name
    are an error when the second class is created. ``abstract=True`` declares an intermediate
    base class that is not registered.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_type: ClassVar[str] = ""
    default_queue: ClassVar[str] = DEFAULT_QUEUE
    default_max_attempts: ClassVar[int | None] = None

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        abstract: bool = False,
        **kwargs: Any,
    ) -> None:
        """Register the subclass under its type name (``name``, else the class name).

        ``queue`` and ``max_attempts`` set the defaults of its enqueues; ``abstract=True``
        registers nothing. ``TypeError`` when another class already has the name.
        """
        super().__init_subclass__(**kwargs)
        if queue is not None:
            cls.default_queue = check_name(queue, "queue name")
        if max_attempts is not None:
            cls.default_max_attempts = check_max_attempts(max_attempts)
        if abstract:
            return
        cls.command_type = _registry.add(cls, name)


def command_class(command_type: str) -> type[Command]:
    """The registered class for a stored type name; ``UnknownCommandType`` if none is loaded."""
    return _registry.find(command_type)


# -- handlers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler: the function, whether it is async, and its time limit."""

    command: type[Command]
    fn: Callable[[Any, CommandContext], Any]
    is_async: bool
    timeout: float | None

    @property
    def name(self) -> str:
        """The handler function's qualified name (``module.function``)."""
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


def handler(command: type[C], *, timeout: float | None = None) -> Callable[[F], F]:
    """Register ``fn(command, ctx)`` (sync or ``async def``) as the handler of a command class.

    ``timeout`` (seconds) bounds one attempt: an attempt that runs longer fails and is retried
    (an async handler is cancelled; a sync one is abandoned and its late ack does not count).
    One command type has one handler.
    """
    if not (isinstance(command, type) and issubclass(command, Command) and command.command_type):
        raise TypeError(f"@handler takes a registered Command class, got {command!r}")
    if timeout is not None:
        timeout = check_seconds(
            timeout, "timeout", low=MIN_HANDLER_TIMEOUT, high=MAX_HANDLER_TIMEOUT
        )

    def register(fn: F) -> F:
        """Record ``fn`` as the command type's handler; ``fn`` is returned unchanged."""
        if not callable(fn):
            raise TypeError(f"@handler decorates a function, got {fn!r}")
        spec = HandlerSpec(command, fn, inspect.iscoroutinefunction(fn), timeout)
        existing = _handlers.get(command.command_type)
        if existing is not None and existing.name != spec.name:
            raise TypeError(
                f"command type {command.command_type!r} already has the handler"
                f" {existing.name}; a command type has one handler"
            )
        _handlers[command.command_type] = spec
        return fn

    return register


def registered_handlers() -> dict[str, HandlerSpec]:
    """The handlers registered in this process, by command type name."""
    return dict(_handlers)


@dataclass(repr=False, eq=False)
class CommandContext:
    """What a handler knows about the attempt it runs: ids, attempt number, a transaction.

    ``tx`` opens a store transaction on first use; it commits together with the command's ack
    (so its writes count exactly when the attempt succeeds and still holds its lease), and
    rolls back when the handler fails. The worker fills one in for every attempt.
    """

    command_id: int
    attempt: int
    max_attempts: int
    queue: str
    command_type: str
    enqueued_at: datetime
    correlation_id: str | None
    worker_id: str
    log: FilteringBoundLogger
    _open_tx: Callable[[], Transaction]  # opens the attempt's transaction when asked for
    _tx: Transaction | None = field(default=None, init=False)
    _ended: bool = field(default=False, init=False)

    @property
    def tx(self) -> Transaction:
        """The attempt's transaction (opened on first use), committed with the ack."""
        if self._ended:
            raise EventSourceError(
                f"the attempt of command {self.command_id} has ended: ctx.tx is usable only"
                " while its handler runs"
            )
        if self._tx is None:
            self._tx = self._open_tx()
        return self._tx

    def _end(self) -> None:
        self._ended = True

    @property
    def last_attempt(self) -> bool:
        """Whether a failure of this attempt makes the command dead."""
        return self.attempt >= self.max_attempts

    def __repr__(self) -> str:
        return (
            f"CommandContext(command_id={self.command_id}, type={self.command_type!r},"
            f" attempt={self.attempt}/{self.max_attempts})"
        )


def check_max_attempts(value: object) -> int:
    """``max_attempts`` of a command: an int from 1 to ``MAX_ATTEMPTS_LIMIT``."""
    return check_int(value, "max_attempts", low=1, high=MAX_ATTEMPTS_LIMIT)
