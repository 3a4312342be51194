"""One test body for both twins: the async API driven through a synchronous view of it.

``Synced(target, runner)`` presents an async object (``AsyncEventStore``, ``AsyncRepository``,
``AsyncCommandQueue``, an ``AsyncTransaction``) with the sync twin's calling convention:
coroutines are run to completion on the test's event loop, async context managers become
context managers, async iterators are drained into iterators, and results that are async
objects themselves are wrapped the same way. Arguments that are ``Synced`` views are handed
over as the objects they stand for. The sync twin is used as it is.

A contract test therefore reads like a sync test, and runs once per twin (the ``twin``
fixture); anything the twins do differently fails in one of the two runs. What ``Synced``
cannot express has a view of its own: ``SyncedEngine`` (the async store's SQLAlchemy engine,
whose connections a test hands to ``tx=``) and ``concurrently`` (calls made at once).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


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


class SyncedConnection(Synced):
    """A synchronous view of a SQLAlchemy ``AsyncConnection``: ``begin``, ``commit`` and
    ``rollback`` run to completion; handed to ``tx=`` it is the ``AsyncConnection``."""

    def begin(self) -> None:
        connection: AsyncConnection = self._target
        _run(self._runner, _awaited(connection.begin()))

    def commit(self) -> None:
        _run(self._runner, self._target.commit())

    def rollback(self) -> None:
        _run(self._runner, self._target.rollback())


class SyncedEngine:
    """A synchronous view of a SQLAlchemy ``AsyncEngine``: ``connect()`` and ``begin()`` are
    context managers of ``SyncedConnection`` views, as the sync ``Engine``'s are."""

    def __init__(self, engine: AsyncEngine, runner: asyncio.Runner) -> None:
        self._engine = engine
        self._runner = runner

    @contextmanager
    def connect(self) -> Iterator[SyncedConnection]:
        with _SyncedContext(self._engine.connect(), self._runner) as connection:
            yield SyncedConnection(connection, self._runner)

    @contextmanager
    def begin(self) -> Iterator[SyncedConnection]:
        with _SyncedContext(self._engine.begin(), self._runner) as connection:
            yield SyncedConnection(connection, self._runner)


def concurrently(
    target: Any, method: str, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]
) -> list[Any]:
    """Make the calls ``target.method(*args, **kwargs)`` at once; each one's result or
    exception, in call order. A sync object is called from one thread per call, released
    together by a barrier; for a ``Synced`` view the calls are tasks of one ``gather``."""
    if isinstance(target, Synced):
        function = getattr(target._target, method)

        async def gathered() -> list[Any]:
            return await asyncio.gather(
                *(function(*args, **kwargs) for args, kwargs in calls), return_exceptions=True
            )

        return list(_run(target._runner, gathered()))

    outcomes: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def call(index: int) -> None:
        args, kwargs = calls[index]
        try:
            barrier.wait(5)
            outcomes[index] = getattr(target, method)(*args, **kwargs)
        except BaseException as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return outcomes
