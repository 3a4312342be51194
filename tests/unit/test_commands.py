"""Commands without a database: the type registry, @handler validation, the argument checks
of enqueue and the queue's operations (all made before any I/O), worker options, backoff."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from eventsource import (
    AsyncCommandQueue,
    AsyncEventStore,
    Command,
    CommandContext,
    CommandInfo,
    CommandQueue,
    CommandWorker,
    DatabaseUnavailable,
    Enqueued,
    EventStore,
    UnknownCommandType,
    handler,
)
from eventsource._logging import get_logger
from eventsource.commands import HandlerSpec, _command, backoff, command_class, registered_handlers

# Nothing listens on this port: any statement a call sends fails with DatabaseUnavailable, so a
# TypeError or ValueError from a call on this store was raised before any I/O.
UNREACHABLE = "postgresql://nobody@127.0.0.1:9/nowhere"


@pytest.fixture(autouse=True)
def isolated_registry() -> Iterator[None]:
    """Command classes and handlers defined by a test are forgotten after it."""
    registry = dict(_command._registry)
    handlers = dict(_command._handlers)
    yield
    _command._registry.clear()
    _command._registry.update(registry)
    _command._handlers.clear()
    _command._handlers.update(handlers)


@pytest.fixture
def offline_store() -> Iterator[EventStore]:
    """A store whose server cannot be reached (no connection is made until a statement)."""
    store = EventStore.from_url(UNREACHABLE, schema="unit_commands")
    yield store
    store.close()


@pytest.fixture
async def offline_async_store() -> AsyncIterator[AsyncEventStore]:
    """The async twin of ``offline_store``."""
    store = AsyncEventStore.from_url(UNREACHABLE, schema="unit_commands")
    yield store
    await store.close()


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


class UnitPing(Command, name="test.unit.Ping"):
    """A registered command for the argument checks below."""

    target: str
    note: str = ""


class UnitAbstract(Command, abstract=True):
    """An abstract intermediate class: never registered, never enqueued."""

    tenant: str


# -- the registry --------------------------------------------------------------------------


def test_type_name_defaults_to_the_class_name() -> None:
    """A Command subclass without name= registers under its class name."""

    class UnitDefaultNamedCommand(Command):
        value: int

    assert UnitDefaultNamedCommand.command_type == "UnitDefaultNamedCommand"
    assert command_class("UnitDefaultNamedCommand") is UnitDefaultNamedCommand


def test_class_options_choose_name_queue_and_max_attempts() -> None:
    """name=, queue= and max_attempts= set the type name and the defaults of enqueue."""
    name = unique("unit.Options")

    class Options(Command, name=name, queue="mail", max_attempts=3):
        value: int

    assert Options.command_type == name
    assert Options.default_queue == "mail"
    assert Options.default_max_attempts == 3
    assert command_class(name) is Options
    assert UnitPing.default_queue == "default"
    assert UnitPing.default_max_attempts is None


def test_unknown_type_name_raises_unknown_command_type() -> None:
    """command_class of a name no loaded class registered is UnknownCommandType, naming it."""
    name = unique("unit.Missing")
    with pytest.raises(UnknownCommandType, match="import the module") as info:
        command_class(name)
    assert info.value.command_type == name
    assert name in str(info.value)


def test_duplicate_type_name_raises_at_class_creation() -> None:
    """A second class under a taken name is a TypeError naming the name and the first class."""
    name = unique("unit.Dup")

    class First(Command, name=name):
        a: int

    with pytest.raises(TypeError, match="already registered") as info:

        class Second(Command, name=name):
            b: int

    assert name in str(info.value)
    assert "First" in str(info.value)
    assert command_class(name) is First


def test_redefining_the_same_module_and_qualname_is_allowed() -> None:
    """Defining the same class again (same module and qualname) re-registers it."""
    name = unique("unit.Again")

    def define() -> type[Command]:
        class Again(Command, name=name):
            value: int

        return Again

    first, second = define(), define()
    assert first is not second
    assert command_class(name) is second


def test_abstract_class_is_not_registered_but_its_subclasses_are() -> None:
    """abstract=True declares a base without a type name; its concrete subclasses register."""
    name = unique("unit.Concrete")

    class Concrete(UnitAbstract, name=name):
        value: int

    assert UnitAbstract.command_type == ""
    assert "UnitAbstract" not in _command._registry
    assert command_class(name) is Concrete
    assert Concrete(tenant="t", value=1).tenant == "t"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"name": ""}, ValueError, "must not be empty"),
        ({"name": "   "}, ValueError, "must not be empty"),
        ({"name": "a\x00b"}, ValueError, "NUL"),
        ({"name": "x" * 201}, ValueError, "longer than 200"),
        ({"name": 5}, TypeError, "must be a str"),
        ({"queue": ""}, ValueError, "queue name must not be empty"),
        ({"queue": "q\x00"}, ValueError, "NUL"),
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": 1001}, ValueError, "max_attempts"),
        ({"max_attempts": True}, TypeError, "max_attempts must be an int, got bool"),
    ],
)
def test_invalid_class_options_are_rejected_at_class_creation(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad name, queue or max_attempts class options raise when the class is created."""
    before = dict(_command._registry)
    with pytest.raises(error, match=match):

        class Bad(Command, **options):
            value: int

    assert _command._registry == before


def test_commands_are_frozen_and_forbid_unknown_fields() -> None:
    """A command is an immutable pydantic model that rejects unknown fields."""
    ping = UnitPing(target="t")
    with pytest.raises(ValidationError):
        ping.target = "other"
    with pytest.raises(ValidationError, match="extra"):
        UnitPing(target="t", unexpected=1)  # type: ignore[call-arg]


# -- @handler ------------------------------------------------------------------------------


def test_handler_registers_sync_and_async_functions() -> None:
    """@handler records the function, whether it is async, its timeout and its name."""

    class SyncCmd(Command, name=unique("unit.Sync")):
        value: int

    class AsyncCmd(Command, name=unique("unit.Async")):
        value: int

    @handler(SyncCmd)
    def on_sync(cmd: SyncCmd, ctx: CommandContext) -> None:
        return None

    @handler(AsyncCmd, timeout=2.5)
    async def on_async(cmd: AsyncCmd, ctx: CommandContext) -> None:
        return None

    handlers = registered_handlers()
    sync_spec = handlers[SyncCmd.command_type]
    async_spec = handlers[AsyncCmd.command_type]
    assert (sync_spec.command, sync_spec.fn, sync_spec.is_async) == (SyncCmd, on_sync, False)
    assert sync_spec.timeout is None
    assert (async_spec.command, async_spec.fn, async_spec.is_async) == (AsyncCmd, on_async, True)
    assert async_spec.timeout == 2.5
    assert sync_spec.name == f"{__name__}.{on_sync.__qualname__}"
    # registered_handlers() hands out a copy: changing it does not register anything.
    handlers.clear()
    assert SyncCmd.command_type in registered_handlers()


@pytest.mark.parametrize(
    "target",
    [Command, UnitAbstract, UnitPing(target="t"), int, "test.unit.Ping", None],
    ids=["base", "abstract", "instance", "int", "type-name", "none"],
)
def test_handler_takes_only_a_registered_command_class(target: object) -> None:
    """@handler of anything but a registered Command class is a TypeError naming it."""
    with pytest.raises(TypeError, match="registered Command class"):
        handler(target)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "timeout",
    [
        0,
        -1,
        -0.5,
        True,
        "1",
        math.nan,
        math.inf,
    ],
)
def test_handler_timeout_must_be_positive_seconds(timeout: object) -> None:
    """A timeout that is not a positive number of seconds (at least a millisecond, as a
    worker's default_timeout) is a ValueError with the value, or a TypeError for another type."""
    error = TypeError if isinstance(timeout, bool | str) else ValueError
    with pytest.raises(error, match=r"timeout must be (from 0\.001 to 86400 seconds|a number)"):
        handler(UnitPing, timeout=timeout)  # type: ignore[arg-type]
    assert UnitPing.command_type not in registered_handlers()


def test_handler_decorates_only_callables() -> None:
    """@handler applied to something not callable is a TypeError."""
    with pytest.raises(TypeError, match="decorates a function"):
        handler(UnitPing)(42)  # type: ignore[type-var]
    assert UnitPing.command_type not in registered_handlers()


def test_a_command_type_has_one_handler() -> None:
    """A second, different handler for one command type is a TypeError naming the first."""

    @handler(UnitPing)
    def first(cmd: UnitPing, ctx: CommandContext) -> None:
        return None

    with pytest.raises(TypeError, match="already has the handler") as info:

        @handler(UnitPing)
        def second(cmd: UnitPing, ctx: CommandContext) -> None:
            return None

    assert "first" in str(info.value)
    assert registered_handlers()[UnitPing.command_type].fn is first


def test_registering_the_same_function_again_replaces_it() -> None:
    """Re-running a handler's definition (same module and qualname) re-registers it."""

    def define() -> Any:
        @handler(UnitPing)
        def on_ping(cmd: UnitPing, ctx: CommandContext) -> None:
            return None

        return on_ping

    define()
    again = define()
    assert registered_handlers()[UnitPing.command_type].fn is again


# -- enqueue: argument checks before any I/O -----------------------------------------------


def test_offline_store_really_cannot_connect(offline_store: EventStore) -> None:
    """A valid enqueue on the offline store reaches the network and fails there.

    This is what makes the checks below meaningful: their errors come before any I/O.
    """
    with pytest.raises(DatabaseUnavailable):
        CommandQueue(offline_store).enqueue(UnitPing(target="t"))


NAIVE = datetime(2030, 1, 1, 12, 0)  # naive on purpose
AWARE = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

BAD_ENQUEUES: list[Any] = [
    pytest.param({"delay": -1}, ValueError, "delay must not be negative, got -1", id="neg-delay"),
    pytest.param(
        {"delay": timedelta(seconds=-5)}, ValueError, "must not be negative", id="neg-timedelta"
    ),
    pytest.param(
        {"delay": "5"},
        TypeError,
        "delay must be a number of seconds or a timedelta, got str: '5'",
        id="str-delay",
    ),
    pytest.param({"delay": math.nan}, ValueError, "delay must be from 0", id="nan-delay"),
    pytest.param({"delay": math.inf}, ValueError, "delay must be from 0", id="inf-delay"),
    pytest.param({"delay": 1e300}, ValueError, "delay must be from 0 to", id="huge-delay"),
    pytest.param(
        {"delay": timedelta(days=999_999)}, ValueError, "delay must be from 0", id="huge-td"
    ),
    pytest.param({"delay": True}, TypeError, "delay must be a number of seconds", id="bool-delay"),
    pytest.param({"run_at": NAIVE}, ValueError, "timezone-aware", id="naive-run-at"),
    pytest.param({"run_at": "2030-01-01"}, TypeError, "run_at must be a datetime", id="str-run"),
    pytest.param({"delay": 1, "run_at": AWARE}, ValueError, "delay or run_at, not both", id="both"),
    pytest.param({"queue": "   "}, ValueError, "queue name must not be empty", id="blank-q"),
    pytest.param({"queue": "q\x00x"}, ValueError, "NUL", id="nul-queue"),
    pytest.param({"queue": "q" * 201}, ValueError, "longer than 200", id="long-queue"),
    pytest.param({"queue": 7}, TypeError, "queue name must be a str", id="int-queue"),
    pytest.param(
        {"queue": ""},
        ValueError,
        "queue name must not be empty",
        id="empty-queue",
    ),
    pytest.param(
        {"dedupe_key": "k\x00"}, ValueError, "dedupe_key must not contain a NUL", id="nul-dk"
    ),
    pytest.param({"dedupe_key": ""}, ValueError, "dedupe_key must not be empty", id="empty-dk"),
    pytest.param(
        {"dedupe_key": "k" * 501}, ValueError, "dedupe_key is 501 characters", id="long-dk"
    ),
    pytest.param(
        {"dedupe_key": "k\udcff"}, ValueError, "dedupe_key is not valid UTF-8", id="surr-dk"
    ),
    pytest.param(
        {"ordering_key": "\ud800"}, ValueError, "ordering_key is not valid UTF-8", id="surr-ok"
    ),
    pytest.param({"queue": "q\udcff"}, ValueError, "queue name is not valid UTF-8", id="surr-q"),
    pytest.param({"dedupe_key": 5}, TypeError, "dedupe_key must be a str", id="int-dk"),
    pytest.param(
        {"ordering_key": "\x00"}, ValueError, "ordering_key must not contain a NUL", id="nul-ok"
    ),
    pytest.param({"ordering_key": ""}, ValueError, "ordering_key must not be empty", id="empty-ok"),
    pytest.param({"max_attempts": 0}, ValueError, "max_attempts must be from 1 to 1000", id="ma-0"),
    pytest.param({"max_attempts": -3}, ValueError, "got -3", id="ma-neg"),
    pytest.param({"max_attempts": 1001}, ValueError, "got 1001", id="ma-big"),
    pytest.param({"max_attempts": 2.0}, TypeError, "max_attempts must be an int", id="ma-float"),
    pytest.param(
        {"priority": 2**31},
        ValueError,
        "priority must be from -2147483648 to 2147483647, got 2147483648",
        id="prio-big",
    ),
    pytest.param({"priority": -(2**31) - 1}, ValueError, "priority must be from", id="prio-small"),
    pytest.param({"priority": 1.5}, TypeError, "priority must be an int", id="prio-float"),
    pytest.param({"priority": True}, TypeError, "priority must be an int", id="prio-bool"),
    pytest.param({"tx": "not a transaction"}, TypeError, "tx must be a store Transaction", id="tx"),
]


@pytest.mark.parametrize(("options", "error", "match"), BAD_ENQUEUES)
def test_enqueue_rejects_bad_arguments_before_any_io(
    offline_store: EventStore, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Each bad enqueue argument raises TypeError/ValueError naming it, without touching I/O."""
    queue = CommandQueue(offline_store)
    with pytest.raises(error, match=match):
        queue.enqueue(UnitPing(target="t"), **options)


@pytest.mark.parametrize(
    ("command", "error", "match"),
    [
        ({"target": "t"}, TypeError, "expected a Command instance, got dict"),
        (None, TypeError, "expected a Command instance, got NoneType"),
        ("test.unit.Ping", TypeError, "expected a Command instance, got str"),
        (UnitPing, TypeError, "expected a Command instance"),
        (UnitAbstract(tenant="t"), UnknownCommandType, "UnitAbstract"),
        (UnitPing(target="\x00"), ValueError, "NUL character"),
        (UnitPing(target="\ud800"), ValueError, "cannot be encoded as JSON"),
    ],
    ids=["dict", "none", "str", "class", "abstract", "nul-payload", "surrogate-payload"],
)
def test_enqueue_rejects_what_is_not_a_storable_command(
    offline_store: EventStore, command: object, error: type[Exception], match: str
) -> None:
    """Non-commands, abstract commands and unstorable payloads fail before any I/O."""
    with pytest.raises(error, match=match):
        CommandQueue(offline_store).enqueue(command)  # type: ignore[arg-type]


def test_enqueue_rejects_a_class_that_is_no_longer_registered(offline_store: EventStore) -> None:
    """An instance of a class replaced in the registry is UnknownCommandType, not sent."""
    name = unique("unit.Replaced")

    def define() -> type[Command]:
        class Replaced(Command, name=name):
            value: int

        return Replaced

    old = define()
    define()  # the same qualname again: the registry now points at the new class
    with pytest.raises(UnknownCommandType, match=name):
        CommandQueue(offline_store).enqueue(old(value=1))  # type: ignore[call-arg]


def test_enqueue_many_checks_every_command_before_any_io(offline_store: EventStore) -> None:
    """One bad command anywhere in enqueue_many fails the whole call before I/O."""
    queue = CommandQueue(offline_store)
    good = [UnitPing(target=str(i)) for i in range(3)]
    with pytest.raises(TypeError, match="expected a Command instance, got int"):
        queue.enqueue_many([*good, 5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="NUL"):
        queue.enqueue_many([*good, UnitPing(target="a\x00")])
    with pytest.raises(ValueError, match="delay must not be negative"):
        queue.enqueue_many(good, delay=-1)
    with pytest.raises(ValueError, match="max_attempts"):
        queue.enqueue_many(good, max_attempts=0)


@pytest.mark.parametrize(
    "commands",
    [UnitPing(target="t"), "abc", b"abc", (UnitPing(target=str(i)) for i in range(2)), 3],
    ids=["one-command", "str", "bytes", "generator", "int"],
)
def test_enqueue_many_takes_a_sequence(offline_store: EventStore, commands: object) -> None:
    """enqueue_many of anything but a sequence of commands is a TypeError."""
    with pytest.raises(TypeError, match="sequence of commands"):
        CommandQueue(offline_store).enqueue_many(commands)  # type: ignore[arg-type]


def test_enqueue_many_of_nothing_sends_nothing(offline_store: EventStore) -> None:
    """An empty enqueue_many returns [] without a statement (the offline store would fail)."""
    assert CommandQueue(offline_store).enqueue_many([]) == []


def test_queue_default_max_attempts_is_checked(offline_store: EventStore) -> None:
    """CommandQueue(max_attempts=0) is a ValueError."""
    with pytest.raises(ValueError, match="max_attempts"):
        CommandQueue(offline_store, max_attempts=0)
    assert CommandQueue(offline_store, max_attempts=7).max_attempts == 7


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda q: q.list(("done",)), "status must be among"),
        (lambda q: q.list(()), "status must be among"),
        (lambda q: q.list(limit=0), "limit must be from 1 to"),
        (lambda q: q.dead(limit=-1), "limit must be from 1 to"),
        (lambda q: q.get(0), "command_id must be from 1 to .*, got 0"),
        (lambda q: q.retry(1, attempts=0), "attempts must be from 1 to 100"),
        (lambda q: q.retry(1, attempts=101), "attempts must be from 1 to 100"),
        (lambda q: q.purge(older_than=-1), "older_than must not be negative"),
        (lambda q: q.list(limit=2**63), "limit must be from 1 to 9223372036854775807"),
        (lambda q: q.get(2**63), "command_id must be from 1 to 9223372036854775807"),
        (lambda q: q.retry(2**70), "command_id must be from 1 to"),
        (lambda q: q.purge(older_than=1e300), "older_than must be from 0 to"),
        (lambda q: q.purge(older_than=math.nan), "older_than must be from 0 to"),
        (lambda q: q.list(queue="q\udcff"), "queue name is not valid UTF-8"),
        (lambda q: q.dead(queue="q\x00"), "queue name must not contain a NUL"),
        (lambda q: q.purge(queue=""), "queue name must not be empty"),
    ],
    ids=[
        "status",
        "no-status",
        "limit",
        "dead-limit",
        "get-0",
        "retry-0",
        "retry-101",
        "purge",
        "limit-2**63",
        "get-2**63",
        "retry-2**70",
        "purge-1e300",
        "purge-nan",
        "list-surrogate-queue",
        "dead-nul-queue",
        "purge-empty-queue",
    ],
)
def test_queue_operations_check_their_arguments(
    offline_store: EventStore, call: Any, match: str
) -> None:
    """list, dead, get, retry and purge reject bad arguments with a ValueError before I/O."""
    with pytest.raises(ValueError, match=match):
        call(CommandQueue(offline_store))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda q: q.get("1"), "command_id must be an int, got str: '1'"),
        (lambda q: q.retry(True), "command_id must be an int, got bool: True"),
        (lambda q: q.list(limit=1.0), "limit must be an int, got float: 1.0"),
        (lambda q: q.retry(1, attempts=None), "attempts must be an int, got NoneType: None"),
    ],
    ids=["get-str", "retry-bool", "limit-float", "attempts-none"],
)
def test_queue_operations_refuse_other_types(
    offline_store: EventStore, call: Any, match: str
) -> None:
    """A command id, limit or attempts that is not an int (a bool is not) is a TypeError."""
    with pytest.raises(TypeError, match=match):
        call(CommandQueue(offline_store))


async def test_async_queue_checks_the_same_arguments(
    offline_async_store: AsyncEventStore,
) -> None:
    """AsyncCommandQueue rejects the same bad input, also before any I/O."""
    queue = AsyncCommandQueue(offline_async_store)
    with pytest.raises(DatabaseUnavailable):
        await queue.enqueue(UnitPing(target="t"))  # the offline store really is offline
    with pytest.raises(ValueError, match="delay must not be negative"):
        await queue.enqueue(UnitPing(target="t"), delay=-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        await queue.enqueue(UnitPing(target="t"), run_at=NAIVE)
    with pytest.raises(TypeError, match="expected a Command instance"):
        await queue.enqueue({"target": "t"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dedupe_key must not contain a NUL"):
        await queue.enqueue(UnitPing(target="t"), dedupe_key="\x00")
    with pytest.raises(TypeError, match="AsyncTransaction"):
        await queue.enqueue(UnitPing(target="t"), tx="nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a Command instance"):
        await queue.enqueue_many([UnitPing(target="t"), 1])  # type: ignore[list-item]
    assert await queue.enqueue_many([]) == []
    with pytest.raises(ValueError, match="attempts must be from 1 to 100"):
        await queue.retry(1, attempts=0)
    with pytest.raises(ValueError, match="status must be among"):
        await queue.list(("finished",))


# -- workers, backoff, context, results ----------------------------------------------------


@pytest.fixture
def ping_handlers() -> dict[str, HandlerSpec]:
    def on_ping(cmd: UnitPing, ctx: CommandContext) -> None:
        return None

    return {UnitPing.command_type: HandlerSpec(UnitPing, on_ping, False, None)}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"queues": "default"}, "non-empty list of queue names"),
        ({"queues": []}, "non-empty list of queue names"),
        ({"concurrency": 0}, "concurrency must be from 1 to 256"),
        ({"concurrency": 257}, "concurrency must be from 1 to 256"),
        ({"lease": 0.1}, "lease must be from 0.5"),
        ({"handlers": {}}, "no command handlers are registered"),
    ],
)
def test_worker_options_are_checked(
    offline_store: EventStore,
    ping_handlers: dict[str, HandlerSpec],
    options: dict[str, Any],
    match: str,
) -> None:
    """Bad worker options are a ValueError when the worker is created (before connecting)."""
    kwargs: dict[str, Any] = {"queues": ["default"], "handlers": ping_handlers, **options}
    queues = kwargs.pop("queues")
    with pytest.raises(ValueError, match=match):
        CommandWorker(offline_store, queues, **kwargs)


def test_worker_deduplicates_queues_and_keeps_given_handlers(
    offline_store: EventStore, ping_handlers: dict[str, HandlerSpec]
) -> None:
    """A worker keeps its queues once each, in order, and only the handlers it was given."""
    worker = CommandWorker(
        offline_store, ["b", "a", "b"], handlers=ping_handlers, worker_id="unit-worker"
    )
    assert worker.queues == ["b", "a"]
    assert worker.worker_id == "unit-worker"
    assert set(worker.handlers) == {UnitPing.command_type}


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 10, 40])
def test_backoff_is_exponential_with_jitter_and_capped(attempt: int) -> None:
    """backoff(n) lies in [0.5, 1] x min(cap, base * 2^(n-1)) and never exceeds the cap."""
    base, cap = 0.5, 60.0
    ceiling = min(cap, base * 2 ** (attempt - 1))
    samples = [backoff(attempt, base, cap) for _ in range(200)]
    assert all(ceiling / 2 <= s <= ceiling for s in samples)
    assert len(set(samples)) > 1  # jittered, not a constant


def test_context_opens_its_transaction_once_and_knows_the_last_attempt() -> None:
    """ctx.tx is opened lazily on first use and reused; last_attempt follows the counts."""
    opened: list[object] = []
    sentinel: Any = object()

    def open_tx() -> Any:
        opened.append(sentinel)
        return sentinel

    def make(attempt: int) -> CommandContext:
        return CommandContext(
            42,
            attempt,
            3,
            "default",
            "test.unit.Ping",
            datetime.now(UTC),
            "corr",
            "w-1",
            get_logger("test"),
            open_tx,
        )

    ctx = make(2)
    assert opened == []
    assert ctx.tx is sentinel
    assert ctx.tx is sentinel
    assert opened == [sentinel]
    assert not ctx.last_attempt
    assert make(3).last_attempt
    assert "command_id=42" in repr(ctx)
    assert "attempt=2/3" in repr(ctx)


def test_enqueued_and_command_info_values() -> None:
    """Enqueued defaults to not duplicate; CommandInfo.as_json is JSON with ISO timestamps."""
    assert Enqueued(5) == Enqueued(5, duplicate=False)
    assert Enqueued(None, duplicate=True).id is None
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    info = CommandInfo(
        1,
        "default",
        "test.unit.Ping",
        "dead",
        0,
        3,
        3,
        now,
        None,
        None,
        "dk",
        None,
        "corr",
        "ValueError: boom",
        "Traceback ...",
        now,
        now,
        '{"target": "t"}',
    )
    data = info.as_json()
    assert json.loads(json.dumps(data)) == data
    assert data["run_at"] == "2030-01-02T03:04:05+00:00"
    assert data["last_error"] == "ValueError: boom"
    assert data["traceback"] == "Traceback ..."
    assert set(data) == set(CommandInfo.__dataclass_fields__)
