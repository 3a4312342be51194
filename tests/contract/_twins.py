"""One test body for both twins: the async API driven through a synchronous view of it.

``Synced(target, runner)`` presents an async object (``AsyncEventStore``, ``AsyncRepository``,
``AsyncCommandQueue``, an ``AsyncTransaction``) with the sync twin's calling convention:
coroutines are run to completion on the test's event loop, async context managers become
context managers, async iterators are drained into iterators, and results that are async
objects themselves are wrapped the same way. Arguments that are ``Synced`` views are handed
over as the objects they stand for. The sync twin is used as it is.

A contract test therefore reads like a sync test, and runs once per twin (the ``twin``
fixture); anything the twins do differently fails in one of the two runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import AsyncIterator
from typing import Any


def _run(runner: asyncio.Runner, coroutine: Any) -> Any:
    """Run ``coroutine`` on the test's loop in the caller's context (correlation ids set by
    the test are seen, as they would be by code awaiting it)."""
    return runner.run(coroutine, context=contextvars.copy_context())


async def _drain(iterator: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in iterator]


class Synced:
    """A synchronous view of an async object (see the module docstring)."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_runner", runner)

    def _wrap(self, value: Any) -> Any:
        runner: asyncio.Runner = self._runner
        if type(value).__module__.startswith("sqlalchemy"):
            return value  # the driver layer's own objects (a connection, a result) as they are
        if inspect.iscoroutine(value) or isinstance(value, asyncio.Future):
            return self._wrap(_run(runner, _awaited(value)))
        if hasattr(value, "__aenter__") and hasattr(value, "__aexit__"):
            return _SyncedContext(value, runner)
        if hasattr(value, "__aiter__"):
            return iter(_run(runner, _drain(value)))
        if _is_async_object(value):
            return Synced(value, runner)
        return value

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if callable(value) and not isinstance(value, type):

            def call(*args: Any, **kwargs: Any) -> Any:
                args = tuple(_unwrap(a) for a in args)
                kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
                return self._wrap(value(*args, **kwargs))

            return call
        return self._wrap(value)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, _unwrap(value))

    def __repr__(self) -> str:
        return f"Synced({self._target!r})"


async def _awaited(value: Any) -> Any:
    return await value


class _SyncedContext:
    def __init__(self, manager: Any, runner: asyncio.Runner) -> None:
        self._manager = manager
        self._runner = runner

    def __enter__(self) -> Any:
        entered = _run(self._runner, self._manager.__aenter__())
        return Synced(entered, self._runner) if _is_async_object(entered) else entered

    def __exit__(self, *exc: Any) -> Any:
        return _run(self._runner, self._manager.__aexit__(*exc))


def _is_async_object(value: Any) -> bool:
    """An object of the framework's async API (whose methods are coroutines)."""
    module = type(value).__module__
    return module.startswith("eventsource") and type(value).__name__.startswith("Async")


def _unwrap(value: Any) -> Any:
    return value._target if isinstance(value, Synced) else value


def repository_for(store: Any, aggregate: type[Any], **options: Any) -> Any:
    """The repository twin that matches ``store``'s (``Repository`` or ``AsyncRepository``)."""
    from eventsource import AsyncRepository, Repository  # noqa: PLC0415

    if isinstance(store, Synced):
        return Synced(AsyncRepository(_unwrap(store), aggregate, **options), store._runner)
    return Repository(store, aggregate, **options)
