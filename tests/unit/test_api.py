"""The public API: exported names, and the sync and async twins offering the same calls."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

import eventsource
from eventsource import (
    AsyncCommandQueue,
    AsyncEventStore,
    AsyncRepository,
    AsyncTransaction,
    CommandQueue,
    EventStore,
    Repository,
    Transaction,
)

PUBLIC_API = [
    "ReplayError",
    "ReactorNotAttached",
    "ProjectionTimeout",
    "ValueRejected",
    "StatementCancelled",
    "SerializationFailure",
    "RetryableError",
    "DeadlockDetected",
    "ANY",
    "NO_STREAM",
    "Aggregate",
    "AggregateNotFound",
    "AppendResult",
    "AsyncCommandQueue",
    "AsyncEventStore",
    "AsyncRepository",
    "AsyncTransaction",
    "Command",
    "CommandContext",
    "CommandInfo",
    "CommandNotFound",
    "CommandQueue",
    "CommandWorker",
    "ConcurrencyError",
    "DatabaseUnavailable",
    "DuplicateEventId",
    "EmbeddedUnavailable",
    "Enqueued",
    "Event",
    "EventDecodeError",
    "EventSourceError",
    "EventStore",
    "ExpectedVersion",
    "LeaseLost",
    "PendingAppend",
    "PositionTokenError",
    "RecordedEvent",
    "Repository",
    "SchemaNotReady",
    "Settings",
    "Transaction",
    "UnknownCommandType",
    "UnknownEventType",
    "UpcastError",
    "WorkerCrashed",
    "commands_running",
    "configure_logging",
    "correlation",
    "current_correlation",
    "handler",
    "partition_for",
    "upcaster",
]

TWINS = [
    (EventStore, AsyncEventStore),
    (Repository, AsyncRepository),
    (Transaction, AsyncTransaction),
    (CommandQueue, AsyncCommandQueue),
]


def test_all_pins_the_public_names() -> None:
    """eventsource.__all__ is exactly the documented public API."""
    assert sorted(eventsource.__all__) == sorted(PUBLIC_API)
    assert len(eventsource.__all__) == len(set(eventsource.__all__))


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_is_importable(name: str) -> None:
    """Each exported name resolves on the package (``from eventsource import name`` works)."""
    module = importlib.import_module("eventsource")
    assert getattr(module, name) is not None
    namespace: dict[str, Any] = {}
    exec(f"from eventsource import {name}", namespace)
    assert namespace[name] is getattr(module, name)


def test_errors_share_one_root() -> None:
    """Every exported exception derives from EventSourceError."""
    errors = [
        getattr(eventsource, n)
        for n in PUBLIC_API
        if isinstance(getattr(eventsource, n), type)
        and issubclass(getattr(eventsource, n), Exception)
    ]
    assert len(errors) == 23
    assert all(issubclass(e, eventsource.EventSourceError) for e in errors)


def test_retryable_errors_are_the_ones_that_may_pass() -> None:
    """Deadlocks, serialization failures and lost connections share RetryableError; the
    errors of the caller's input or of the data do not."""
    retryable = {
        n
        for n in PUBLIC_API
        if _is_error(n) and issubclass(getattr(eventsource, n), eventsource.RetryableError)
    }
    assert retryable == {
        "DatabaseUnavailable",
        "DeadlockDetected",
        "RetryableError",
        "SerializationFailure",
    }
    assert issubclass(eventsource.ValueRejected, ValueError)


def _is_error(name: str) -> bool:
    value = getattr(eventsource, name)
    return isinstance(value, type) and issubclass(value, Exception)


def public_names(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def shape(member: Any) -> Any:
    """What must match between twins: parameter names, kinds and defaults; or 'property'."""
    if isinstance(member, property):
        return "property"
    function = member.__func__ if isinstance(member, classmethod | staticmethod) else member
    kind = type(member).__name__ if isinstance(member, classmethod | staticmethod) else "method"
    params = inspect.signature(function).parameters.values()
    return kind, [(p.name, p.kind, p.default) for p in params]


@pytest.mark.parametrize(("sync", "async_"), TWINS, ids=lambda c: c.__name__)
def test_twins_share_signatures(sync: type, async_: type) -> None:
    """Every public method both twins have takes the same parameters (names, kinds, defaults)."""
    common = public_names(sync) & public_names(async_)
    assert common, "the twins share no public names"
    for name in sorted(common):
        sync_member = inspect.getattr_static(sync, name)
        async_member = inspect.getattr_static(async_, name)
        assert shape(sync_member) == shape(async_member), name


@pytest.mark.parametrize(("sync", "async_"), TWINS, ids=lambda c: c.__name__)
def test_async_twin_methods_are_coroutines_where_they_do_io(sync: type, async_: type) -> None:
    """The async twin's I/O methods are coroutine (or async generator) functions."""
    plain = {"on_commit", "transaction", "from_url", "from_env"}
    for name in sorted(public_names(sync) & public_names(async_)):
        member = inspect.getattr_static(async_, name)
        if isinstance(member, property | classmethod) or name in plain:
            continue
        assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), name


def test_repository_twins_have_the_same_names() -> None:
    """Repository and AsyncRepository expose exactly the same public names."""
    assert public_names(Repository) == public_names(AsyncRepository)


def test_transaction_twins_have_the_same_names() -> None:
    """Transaction and AsyncTransaction expose exactly the same public names."""
    assert public_names(Transaction) == public_names(AsyncTransaction)


def test_store_twins_have_the_same_names() -> None:
    """EventStore and AsyncEventStore expose exactly the same public names."""
    assert public_names(EventStore) == public_names(AsyncEventStore)


def test_version_is_the_installed_distributions() -> None:
    """eventsource.__version__ is the version of the distribution that installs the package."""
    from importlib import metadata  # noqa: PLC0415

    names = metadata.packages_distributions()["eventsource"]
    assert eventsource.__version__ == metadata.version(names[0])
    assert isinstance(eventsource.__version__, str)
    assert eventsource.__version__[0].isdigit()
