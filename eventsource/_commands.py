"""Commands, their handlers, and the queue that delivers them at least once.

    class SendStatement(Command, name="bank.SendStatement", queue="statements"):
        account_id: str

    @handler(SendStatement)
    def send_statement(cmd: SendStatement, ctx: CommandContext) -> None:
        ...                     # ctx.command_id, ctx.attempt, ctx.tx, ctx.log

    queue = CommandQueue(store)
    queue.enqueue(SendStatement(account_id="acc-1"), tx=tx)   # commits with tx's appends

Workers (``eventsource worker run MODULE``) claim commands, run their handlers, and ack them;
a failed attempt is retried with exponential backoff and jitter, and after ``max_attempts`` the
command is dead, kept with its error and traceback until an operator retries or purges it.
Finished commands are deleted by their ack, so the table holds only live and dead commands.
"""

from __future__ import annotations

import builtins
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from ._async_store import AsyncEventStore, AsyncTransaction
from ._async_store import _fetch as _afetch
from ._checks import (
    BIGINT_MAX,
    INT_MAX,
    INT_MIN,
    check_json_depth,
    check_name,
    check_seconds,
    object_depth,
    too_deep,
)
from ._context import current_correlation
from ._core import _json_text
from ._errors import CommandNotFound, EventSourceError, UnknownCommandType
from ._store import EventStore, Transaction, _driver, _fetch

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = [
    "Command",
    "CommandContext",
    "CommandInfo",
    "CommandQueue",
    "Enqueued",
    "command_class",
    "handler",
]

C = TypeVar("C", bound="Command")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 5
MAX_ATTEMPTS_LIMIT = 1000
MAX_KEY_LENGTH = 500  # dedupe and ordering keys (names: MAX_NAME_LENGTH of _checks)
MAX_HANDLER_TIMEOUT = 86400.0  # a day: an attempt that runs longer is not supervised any more
# Delays and ages: a century is beyond any schedule and well within PostgreSQL's timestamps.
MAX_DELAY = 100 * 365.25 * 86400
STATUSES = ("pending", "running", "dead")
# Key of a SQLAlchemy ``Connection.info`` entry (a set) in which enqueues made in that
# connection's transaction leave their queues for its owner to announce after the commit.
ANNOUNCE_AFTER_COMMIT = "eventsource.announce_after_commit"

_registry: dict[str, type[Command]] = {}
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
        super().__init_subclass__(**kwargs)
        if queue is not None:
            cls.default_queue = check_name(queue, "queue name")
        if max_attempts is not None:
            cls.default_max_attempts = check_max_attempts(max_attempts)
        if abstract:
            return
        type_name = name if name is not None else cls.__name__
        check_name(type_name, "command type name")
        existing = _registry.get(type_name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise TypeError(
                f"command type name {type_name!r} is already registered by"
                f" {existing.__module__}.{existing.__qualname__}; choose another with"
                f" `class {cls.__name__}(Command, name=...)`"
            )
        cls.command_type = type_name
        _registry[type_name] = cls


def command_class(command_type: str) -> type[Command]:
    """The registered class for a stored type name; ``UnknownCommandType`` if none is loaded."""
    try:
        return _registry[command_type]
    except KeyError:
        raise UnknownCommandType(command_type) from None


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
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


def handler(command: type[C], *, timeout: float | None = None) -> Callable[[F], F]:
    """Register ``fn(command, ctx)`` (sync or ``async def``) as the handler of a command class.

    ``timeout`` (seconds) bounds one attempt: an attempt that runs longer fails and is retried
    (an async handler is cancelled; a sync one is abandoned and its late ack does not count).
    One command type has one handler.
    """
    if not (isinstance(command, type) and issubclass(command, Command) and command.command_type):
        raise TypeError(f"@handler takes a registered Command class, got {command!r}")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_HANDLER_TIMEOUT
    ):
        raise ValueError(
            f"timeout must be a positive number of seconds, at most {MAX_HANDLER_TIMEOUT:g},"
            f" got {timeout!r}"
        )

    def register(fn: F) -> F:
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


class CommandContext:
    """What a handler knows about the attempt it runs: ids, attempt number, a transaction.

    ``tx`` opens a store transaction on first use; it commits together with the command's ack
    (so its writes count exactly when the attempt succeeds and still holds its lease), and
    rolls back when the handler fails.
    """

    def __init__(  # noqa: PLR0917 - filled by the worker for every attempt
        self,
        command_id: int,
        attempt: int,
        max_attempts: int,
        queue: str,
        command_type: str,
        enqueued_at: datetime,
        correlation_id: str | None,
        worker_id: str,
        log: FilteringBoundLogger,
        open_tx: Callable[[], Transaction],
    ) -> None:
        self.command_id = command_id
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.queue = queue
        self.command_type = command_type
        self.enqueued_at = enqueued_at
        self.correlation_id = correlation_id
        self.worker_id = worker_id
        self.log = log
        self._open_tx = open_tx
        self._tx: Transaction | None = None
        self._ended = False

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


# -- input checks --------------------------------------------------------------------------


# Queue and type names are checked by ``check_name`` (eventsource._checks): non-empty UTF-8
# text of at most 200 characters, without NUL.


def _check_key(value: object, what: str) -> str | None:
    """A dedupe or ordering key: ``None``, or UTF-8 text of 1 to 500 characters without NUL."""
    if value is None:
        return None
    return check_name(value, what, max_length=MAX_KEY_LENGTH, blank=True)


def _check_queue(value: object) -> str | None:
    """A queue to filter on: ``None`` (every queue) or a queue name."""
    return None if value is None else check_name(value, "queue name")


def check_max_attempts(value: object) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_ATTEMPTS_LIMIT
    ):
        raise ValueError(
            f"max_attempts must be an int from 1 to {MAX_ATTEMPTS_LIMIT}, got {value!r}"
        )
    return value


def _check_priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not INT_MIN <= value <= INT_MAX:
        raise ValueError(f"priority must be a 32-bit int (higher runs first), got {value!r}")
    return value


def seconds(value: object, what: str) -> float:
    """A duration of 0 to ``MAX_DELAY`` (100 years), given as seconds or a ``timedelta``.

    ``TypeError`` for another type; ``ValueError`` for a negative, non-finite or larger value.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be seconds (a number) or a timedelta, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return check_seconds(value, what, high=MAX_DELAY)


def _check_run_at(run_at: object) -> datetime | None:
    if run_at is None:
        return None
    if not isinstance(run_at, datetime):
        raise TypeError(f"run_at must be a datetime, got {run_at!r}")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise ValueError(f"run_at must be timezone-aware, got {run_at!r}")
    return run_at


def _encode(command: object) -> tuple[str, str]:
    """The command's (type name, JSON payload); ``TypeError`` for what is not a command."""
    if not isinstance(command, Command):
        raise TypeError(f"expected a Command instance, got {type(command).__name__}: {command!r}")
    cls = type(command)
    if _registry.get(cls.command_type) is not cls:
        raise UnknownCommandType(cls.command_type or cls.__qualname__)
    what = f"command {cls.command_type}"
    try:
        payload = command.model_dump_json()
    except PydanticSerializationError as exc:
        if "depth exceeded" in str(exc):  # pydantic's serializer stops at 255 levels
            raise ValueError(too_deep(what, object_depth(command))) from None
        raise ValueError(f"{what} cannot be encoded as JSON: {exc}") from None
    # The worker decodes payloads with pydantic: refuse what it could not decode.
    return cls.command_type, check_json_depth(_json_text(payload, what), what)


@dataclass(frozen=True, slots=True)
class Enqueued:
    """The id of an enqueued command; ``duplicate`` when its dedupe key was already pending.

    For a duplicate nothing was written and ``id`` is the pending command's (or ``None`` if it
    started in the meantime, or was enqueued by a transaction that committed while this
    enqueue ran).
    """

    id: int | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class _Options:
    queue: str | None
    delay: float | timedelta | None
    run_at: datetime | None
    priority: int
    dedupe_key: str | None
    ordering_key: str | None
    max_attempts: int | None


def enqueue_params(command: Command, options: _Options, default_attempts: int) -> dict[str, Any]:
    """The checked parameters of one enqueue (everything before any I/O)."""
    command_type, payload = _encode(command)
    cls = type(command)
    if options.delay is not None and options.run_at is not None:
        raise ValueError("give delay or run_at, not both")
    attempts = options.max_attempts
    if attempts is None:
        attempts = cls.default_max_attempts or default_attempts
    correlation_id, causation_id = current_correlation()
    return {
        "queue": check_name(
            cls.default_queue if options.queue is None else options.queue, "queue name"
        ),
        "command_type": command_type,
        "payload": payload,
        "priority": _check_priority(options.priority),
        "max_attempts": check_max_attempts(attempts),
        "run_at": _check_run_at(options.run_at),
        "delay": None if options.delay is None else seconds(options.delay, "delay"),
        "dedupe_key": _check_key(options.dedupe_key, "dedupe_key"),
        "ordering_key": _check_key(options.ordering_key, "ordering_key"),
        "correlation_id": correlation_id,
        "causation_id": causation_id,
    }


def enqueue_many_params(
    commands: Sequence[Command], options: _Options, default_attempts: int
) -> dict[str, list[Any]]:
    """The parameters of ``enqueue_many``: one list per parameter of ``enqueue_params``."""
    if isinstance(commands, Command | str | bytes) or not isinstance(commands, Sequence):
        raise TypeError(f"enqueue_many takes a sequence of commands, got {commands!r}")
    if options.dedupe_key is not None:
        raise ValueError("enqueue_many takes no dedupe_key: one key would drop all but one")
    columns: dict[str, list[Any]] = {}
    for command in commands:
        for key, value in enqueue_params(command, options, default_attempts).items():
            columns.setdefault(key, []).append(value)
    return columns


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """A stored command as ``commands list`` and ``commands dead`` show it."""

    id: int
    queue: str
    command_type: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime
    lease_until: datetime | None
    worker: str | None
    dedupe_key: str | None
    ordering_key: str | None
    correlation_id: str | None
    last_error: str | None
    traceback: str | None
    enqueued_at: datetime
    updated_at: datetime
    payload: str

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _statuses(statuses: Sequence[str]) -> list[str]:
    chosen = [statuses] if isinstance(statuses, str) else list(statuses)
    unknown = [s for s in chosen if s not in STATUSES]
    if unknown or not chosen:
        raise ValueError(f"status must be among {', '.join(STATUSES)}, got {unknown or chosen}")
    return chosen


def _limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= BIGINT_MAX:
        raise ValueError(f"limit must be an int from 1 to {BIGINT_MAX}, got {limit!r}")
    return limit


def _retry_attempts(attempts: object) -> int:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
        raise ValueError(f"attempts must be an int from 1 to 100, got {attempts!r}")
    return attempts


# -- the queue (sync) ----------------------------------------------------------------------


Rows = list[tuple[Any, ...]]
Infos = list["CommandInfo"]
Ids = list[int]


class _QueueCore:
    """What the sync and async queues share besides I/O: checks, statements, results."""

    def __init__(self, store: EventStore | AsyncEventStore, max_attempts: int) -> None:
        self.max_attempts = check_max_attempts(max_attempts)
        self._sql = store._command_queries
        self._announcer = store._announcer

    def _one(self, command: Command, options: _Options) -> tuple[str, dict[str, Any]]:
        params = enqueue_params(command, options, self.max_attempts)
        return self._sql.enqueue_for(params), params

    def _many(self, commands: Sequence[Command], options: _Options) -> dict[str, list[Any]]:
        return enqueue_many_params(commands, options, self.max_attempts)

    @staticmethod
    def _enqueued(rows: Rows) -> Enqueued:
        if not rows:
            return Enqueued(None, duplicate=True)
        return Enqueued(int(rows[0][0]), duplicate=bool(rows[0][1]))

    def _announce(self, queues: Sequence[str]) -> None:
        """Wake idle workers of these queues once the enqueue has committed."""
        self._announcer.announce(queues, channel=self._sql.channel)

    def _notify_params(self, queues: Sequence[str]) -> dict[str, str]:
        """A NOTIFY inside the caller's own transaction (sent when it commits)."""
        return {"channel": self._sql.channel, "payload": ",".join(sorted(queues))}


class CommandQueue(_QueueCore):
    """Enqueue commands to the store's database and inspect them; workers deliver them.

    ``max_attempts`` is the default for commands whose class and ``enqueue`` call set none.
    """

    def __init__(self, store: EventStore, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        super().__init__(store, max_attempts)
        self.store = store

    # -- enqueue -------------------------------------------------------------------------

    def enqueue(
        self,
        command: Command,
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        dedupe_key: str | None = None,
        ordering_key: str | None = None,
        max_attempts: int | None = None,
        tx: Transaction | Connection | None = None,
    ) -> Enqueued:
        """Queue ``command`` for a worker; with ``tx``, it commits (or not) with ``tx``.

        ``delay`` (seconds or timedelta) or ``run_at`` schedules it; higher ``priority`` runs
        first; a ``dedupe_key`` already held by a command not yet started makes this a no-op
        (``Enqueued.duplicate``); commands sharing an ``ordering_key`` run one at a time in
        enqueue order; ``max_attempts`` bounds the retries before the command is dead.
        """
        options = _Options(queue, delay, run_at, priority, dedupe_key, ordering_key, max_attempts)
        sql, params = self._one(command, options)
        return self._enqueued(self._execute(sql, params, tx, params["queue"]))

    def enqueue_many(
        self,
        commands: Sequence[Command],
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        ordering_key: str | None = None,
        max_attempts: int | None = None,
        tx: Transaction | Connection | None = None,
    ) -> Ids:
        """Queue many commands in one statement (all checked before any is written); their ids."""
        options = _Options(queue, delay, run_at, priority, None, ordering_key, max_attempts)
        params = self._many(commands, options)
        if not params:
            return []
        rows = self._execute(self._sql.enqueue_many, params, tx, *set(params["queue"]))
        return [int(row[0]) for row in rows]

    def _execute(
        self,
        sql: str,
        params: dict[str, Any],
        tx: Transaction | Connection | None,
        *queues: str,
    ) -> Rows:
        store = self.store
        with store._errors():
            if tx is None:
                with store._raw() as conn:
                    rows = _fetch(conn, sql, params)
                self._announce(queues)
                return rows
            if isinstance(tx, Transaction):
                rows = _fetch(_driver(tx.connection), sql, params)
                tx.on_commit(lambda: self._announce(queues))
                return rows
            if isinstance(tx, Connection):  # e.g. a projection's batch transaction
                conn = _driver(tx)
                rows = _fetch(conn, sql, params)
                after_commit = tx.info.get(ANNOUNCE_AFTER_COMMIT)
                if isinstance(after_commit, set):
                    # The owner of the transaction (a projection worker running a reactor)
                    # announces the queues once it has committed: no NOTIFY in the
                    # transaction, whose commit would take PostgreSQL's notify lock.
                    after_commit.update(queues)
                else:
                    _fetch(conn, self._sql.notify, self._notify_params(queues))
                return rows
        raise TypeError(f"tx must be a store Transaction or a SQLAlchemy Connection, got {tx!r}")

    # -- inspection and operations -------------------------------------------------------

    def list(
        self,
        statuses: Sequence[str] = ("pending", "running"),
        *,
        queue: str | None = None,
        limit: int = 100,
    ) -> Infos:
        """Commands in these states, oldest first (pending and running by default)."""
        params = {
            "statuses": _statuses(statuses),
            "queue": _check_queue(queue),
            "limit": _limit(limit),
        }
        return [CommandInfo(*row) for row in self._run(self._sql.list, params)]

    def dead(self, *, queue: str | None = None, limit: int = 100) -> Infos:
        """Dead commands with their last error and traceback, oldest first."""
        return self.list(("dead",), queue=queue, limit=limit)

    def get(self, command_id: int) -> CommandInfo | None:
        """One command by id (``None`` once it is done: acks delete commands)."""
        rows = self._run(self._sql.get, {"id": _command_id(command_id)})
        return CommandInfo(*rows[0]) if rows else None

    def retry(self, command_id: int, *, attempts: int = 1) -> None:
        """Give a dead command ``attempts`` more attempts, starting now."""
        params = {"id": _command_id(command_id), "attempts": _retry_attempts(attempts)}
        rows = self._run(self._sql.retry, params)
        if not rows:
            raise CommandNotFound(command_id, _why_not_dead(self.get(command_id)))
        self._announce([rows[0][0]])

    def purge(self, *, older_than: float | timedelta = 0, queue: str | None = None) -> int:
        """Delete dead commands last updated more than ``older_than`` ago; how many."""
        params = {"older_than": seconds(older_than, "older_than"), "queue": _check_queue(queue)}
        return len(self._run(self._sql.purge, params))

    def counts(self) -> builtins.list[tuple[str, str, int, datetime]]:
        """(queue, status, count, oldest enqueue time) for every queue and state."""
        rows = self._run(self._sql.counts, None)
        return [(str(q), str(status), int(n), oldest) for q, status, n, oldest in rows]

    def _run(self, sql: str, params: dict[str, Any] | None) -> Rows:
        with self.store._raw() as conn:  # errors translated
            return _fetch(conn, sql, params)


def _command_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= BIGINT_MAX:
        raise ValueError(f"a command id is an int from 1 to {BIGINT_MAX}, got {value!r}")
    return value


def _why_not_dead(info: CommandInfo | None) -> str:
    if info is None:
        return "no such command (done commands are deleted)"
    return f"it is {info.status}, not dead: only dead commands can be retried"


# -- the queue (async) ---------------------------------------------------------------------


class AsyncCommandQueue(_QueueCore):
    """The async twin of ``CommandQueue`` over an ``AsyncEventStore``."""

    def __init__(self, store: AsyncEventStore, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        super().__init__(store, max_attempts)
        self.store = store

    async def enqueue(
        self,
        command: Command,
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        dedupe_key: str | None = None,
        ordering_key: str | None = None,
        max_attempts: int | None = None,
        tx: AsyncTransaction | AsyncConnection | None = None,
    ) -> Enqueued:
        """Queue ``command`` for a worker (see ``CommandQueue.enqueue``)."""
        options = _Options(queue, delay, run_at, priority, dedupe_key, ordering_key, max_attempts)
        sql, params = self._one(command, options)
        return self._enqueued(await self._execute(sql, params, tx, params["queue"]))

    async def enqueue_many(
        self,
        commands: Sequence[Command],
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        ordering_key: str | None = None,
        max_attempts: int | None = None,
        tx: AsyncTransaction | AsyncConnection | None = None,
    ) -> Ids:
        """Queue many commands in one statement; their ids."""
        options = _Options(queue, delay, run_at, priority, None, ordering_key, max_attempts)
        params = self._many(commands, options)
        if not params:
            return []
        rows = await self._execute(self._sql.enqueue_many, params, tx, *set(params["queue"]))
        return [int(row[0]) for row in rows]

    async def _execute(
        self,
        sql: str,
        params: dict[str, Any],
        tx: AsyncTransaction | AsyncConnection | None,
        *queues: str,
    ) -> Rows:
        store = self.store
        with store._errors():
            if tx is None:
                async with store._autocommit.connect() as conn:
                    rows = await _afetch(conn, sql, params)
                self._announce(queues)
                return rows
            if isinstance(tx, AsyncTransaction):
                rows = await _afetch(tx.connection, sql, params)
                tx.on_commit(lambda: self._announce(queues))
                return rows
            if isinstance(tx, AsyncConnection):
                rows = await _afetch(tx, sql, params)
                await _afetch(tx, self._sql.notify, self._notify_params(queues))
                return rows
        raise TypeError(
            f"tx must be an AsyncTransaction or a SQLAlchemy AsyncConnection, got {tx!r}"
        )

    async def list(
        self,
        statuses: Sequence[str] = ("pending", "running"),
        *,
        queue: str | None = None,
        limit: int = 100,
    ) -> Infos:
        """Commands in these states, oldest first."""
        params = {
            "statuses": _statuses(statuses),
            "queue": _check_queue(queue),
            "limit": _limit(limit),
        }
        return [CommandInfo(*row) for row in await self._run(self._sql.list, params)]

    async def dead(self, *, queue: str | None = None, limit: int = 100) -> Infos:
        """Dead commands with their last error and traceback."""
        return await self.list(("dead",), queue=queue, limit=limit)

    async def get(self, command_id: int) -> CommandInfo | None:
        """One command by id (``None`` once it is done)."""
        rows = await self._run(self._sql.get, {"id": _command_id(command_id)})
        return CommandInfo(*rows[0]) if rows else None

    async def retry(self, command_id: int, *, attempts: int = 1) -> None:
        """Give a dead command ``attempts`` more attempts, starting now."""
        params = {"id": _command_id(command_id), "attempts": _retry_attempts(attempts)}
        rows = await self._run(self._sql.retry, params)
        if not rows:
            raise CommandNotFound(command_id, _why_not_dead(await self.get(command_id)))
        self._announce([rows[0][0]])

    async def purge(self, *, older_than: float | timedelta = 0, queue: str | None = None) -> int:
        """Delete dead commands last updated more than ``older_than`` ago; how many."""
        params = {"older_than": seconds(older_than, "older_than"), "queue": _check_queue(queue)}
        return len(await self._run(self._sql.purge, params))

    async def counts(self) -> builtins.list[tuple[str, str, int, datetime]]:
        """(queue, status, count, oldest enqueue time) for every queue and state."""
        rows = await self._run(self._sql.counts, None)
        return [(str(q), str(status), int(n), oldest) for q, status, n, oldest in rows]

    async def _run(self, sql: str, params: dict[str, Any] | None) -> Rows:
        with self.store._errors():
            async with self.store._autocommit.connect() as conn:
                return await _afetch(conn, sql, params)
