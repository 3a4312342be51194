"""Enqueue arguments: checked and encoded once for both queues."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from pydantic_core import PydanticSerializationError

from eventsource._checks import (
    INT_MAX,
    INT_MIN,
    check_aware_datetime,
    check_int,
    check_name,
    check_seconds,
)
from eventsource._context import current_correlation
from eventsource._errors import UnknownCommandType
from eventsource._json import (
    check_json_depth,
    check_json_text,
    object_depth,
    too_deep,
)
from eventsource._telemetry import stored_carrier
from eventsource.commands._command import (
    MAX_DELAY,
    MAX_KEY_LENGTH,
    STATUSES,
    Command,
    _registry,
    check_max_attempts,
)
from eventsource.commands._queries import command_queries
from eventsource.db import Direct
from eventsource.store import Announcer, AsyncEventStore, EventStore

__all__ = ["CommandInfo", "Enqueued", "enqueued_attributes", "enqueued_many_attributes"]


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


def seconds(value: object, what: str) -> float:
    """A duration of 0 to ``MAX_DELAY`` (100 years), given as seconds or a ``timedelta``.

    ``TypeError`` for another type; ``ValueError`` for a negative, non-finite or larger value.
    """
    return check_seconds(value, what, high=MAX_DELAY, or_timedelta=True)


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
    return cls.command_type, check_json_depth(check_json_text(payload, what), what)


@dataclass(frozen=True, slots=True)
class Enqueued:
    """The id of an enqueued command; ``duplicate`` when its dedupe key was already pending.

    For a duplicate nothing was written and ``id`` is the pending command's (or ``None`` if it
    started in the meantime, or was enqueued by a transaction that committed while this
    enqueue ran).
    """

    id: int | None
    duplicate: bool = False


class _Options(NamedTuple):
    """An enqueue's options as given (a tuple: a tenth of a frozen dataclass's cost to make)."""

    queue: str | None
    delay: float | timedelta | None
    run_at: datetime | None
    priority: int
    dedupe_key: str | None
    ordering_key: str | None
    max_attempts: int | None


def enqueue_params(
    command: Command, options: _Options, default_attempts: int, *, carry: bool = True
) -> dict[str, Any]:
    """The checked parameters of one enqueue (everything before any I/O); ``carry``: with the
    trace context of the current span (``enqueue_many`` takes it once for all)."""
    command_type, payload = _encode(command)
    cls = type(command)
    if options.delay is not None and options.run_at is not None:
        raise ValueError("give delay or run_at, not both")
    attempts = options.max_attempts
    if attempts is None:
        attempts = cls.default_max_attempts or default_attempts
    correlation_id, causation_id = current_correlation()
    run_at = options.run_at
    return {
        "queue": check_name(
            cls.default_queue if options.queue is None else options.queue, "queue name"
        ),
        "command_type": command_type,
        "payload": payload,
        "priority": check_int(options.priority, "priority", low=INT_MIN, high=INT_MAX),
        "max_attempts": check_max_attempts(attempts),
        "run_at": None if run_at is None else check_aware_datetime(run_at, "run_at"),
        "delay": None if options.delay is None else seconds(options.delay, "delay"),
        "dedupe_key": _check_key(options.dedupe_key, "dedupe_key"),
        "ordering_key": _check_key(options.ordering_key, "ordering_key"),
        "correlation_id": correlation_id,
        "causation_id": causation_id,
        "trace_context": stored_carrier() if carry else None,  # None unless a span records
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
        for key, value in enqueue_params(command, options, default_attempts, carry=False).items():
            columns.setdefault(key, []).append(value)
    if columns:  # one span enqueues them all: one trace context, computed once
        columns["trace_context"] = [stored_carrier()] * len(commands)
    return columns


def enqueued_attributes(params: dict[str, Any], enqueued: Enqueued) -> dict[str, Any]:
    """The attributes of an enqueue's span: the command, its queue, id and whether it was a
    duplicate."""
    attributes: dict[str, Any] = {
        "eventsource.command.type": params["command_type"],
        "eventsource.queue": params["queue"],
        "eventsource.command.duplicate": enqueued.duplicate,
    }
    if enqueued.id is not None:
        attributes["eventsource.command.id"] = enqueued.id
    return attributes


def enqueued_many_attributes(params: dict[str, list[Any]], ids: list[int]) -> dict[str, Any]:
    """The attributes of an ``enqueue_many`` span: how many, of which types, to which queues."""
    return {
        "eventsource.command.count": len(ids),
        "eventsource.command.type": sorted(set(params["command_type"])),
        "eventsource.queue": sorted(set(params["queue"])),
    }


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
        """Its fields as JSON values (times in ISO 8601), for ``commands list --json``."""
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


def _command_id(value: object) -> int:
    return check_int(value, "command_id", low=1)


# -- what both queues share ----------------------------------------------------------------


Rows = list[tuple[Any, ...]]
Infos = list["CommandInfo"]
Ids = list[int]

# Seconds after an enqueue that announced itself during which the next ones leave it to the
# announcer (which coalesces over the same spell): at most one commit per spell waits on
# PostgreSQL's notify lock.
QUIET = Announcer.LINGER


class _QueueCore:
    """What the sync and async queues share besides I/O: checks, statements, results."""

    def __init__(self, store: EventStore | AsyncEventStore, max_attempts: int) -> None:
        self.max_attempts = check_max_attempts(max_attempts)
        self._sql = command_queries(store.schema)
        self._announcer = store._announcer
        self._notified_at = -QUIET  # monotonic time of the last enqueue that announced itself

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

    @staticmethod
    def _ids(rows: Rows) -> Ids:
        return [int(row[0]) for row in rows]

    @staticmethod
    def _list_params(statuses: Sequence[str], queue: str | None, limit: int) -> dict[str, Any]:
        return {
            "statuses": _statuses(statuses),
            "queue": _check_queue(queue),
            "limit": check_int(limit, "limit", low=1),
        }

    @staticmethod
    def _infos(rows: Rows) -> Infos:
        return [CommandInfo(*row) for row in rows]

    @staticmethod
    def _retry_params(command_id: int, attempts: int) -> dict[str, int]:
        return {
            "id": _command_id(command_id),
            "attempts": check_int(attempts, "attempts", low=1, high=100),
        }

    @staticmethod
    def _purge_params(older_than: float | timedelta, queue: str | None) -> dict[str, Any]:
        return {"older_than": seconds(older_than, "older_than"), "queue": _check_queue(queue)}

    @staticmethod
    def _counts(rows: Rows) -> list[tuple[str, str, int, datetime]]:
        return [(str(q), str(status), int(n), oldest) for q, status, n, oldest in rows]

    def _alone(self, sql: str, params: dict[str, Any]) -> tuple[str | Direct, bool]:
        """The statement of an enqueue run alone, and whether it announces its queue itself.

        After a quiet spell a plain enqueue carries its own NOTIFY, delivered when it commits:
        an idle worker wakes without the hop through the announcer's thread and connection.
        Within a burst the announcer coalesces the announcements after the commits instead.
        """
        if sql != self._sql.enqueue_plain:
            return sql, False
        now = time.monotonic()
        if now - self._notified_at < QUIET:
            return self._sql.direct["enqueue_plain"], False
        self._notified_at = now
        params["channel"] = self._sql.channel
        return self._sql.direct["enqueue_plain_notify"], True

    def _announce(self, queues: Sequence[str]) -> None:
        """Wake idle workers of these queues once the enqueue has committed."""
        self._announcer.announce(queues, channel=self._sql.channel)

    def _notify_params(self, queues: Sequence[str]) -> dict[str, str]:
        """A NOTIFY inside the caller's own transaction (sent when it commits)."""
        return {"channel": self._sql.channel, "payload": ",".join(sorted(queues))}


def _why_not_dead(info: CommandInfo | None) -> str:
    if info is None:
        return "no such command (done commands are deleted)"
    return f"it is {info.status}, not dead: only dead commands can be retried"
