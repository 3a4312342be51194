"""Group commit: standalone appends that arrive together are written in one statement.

An append outside a transaction is one autocommit statement, and its commit (a WAL flush) is
most of its cost. When several threads (``EventStore``) or tasks (``AsyncEventStore``) of one
process append at the same moment, the first ``WRITERS`` write at once; those that arrive
while they are under way queue up, and the next writer takes all of them (one append per
stream, in arrival order) into one ``append_group`` statement: one statement, one commit, one
WAL flush. The
ordering contract is that of a transaction appending to several streams: the partitions'
heads are locked in ascending order and every append's events get consecutive positions.

Each append still gets its own result or its own error. The statement writes the appends
whose claims on their streams hold; each of the others (a version conflict, an idempotent
retry, a stream created meanwhile) is then written on its own, as without group commit, so
that it alone fails. An error that is not an append's own (the connection broke) is every
waiting append's.

A writer in a quiet spell writes alone, exactly as without group commit (a lock taken and
released is all it adds). Turned off (``group_commit=False``, ``EVENTSOURCE_GROUP_COMMIT``),
every append writes alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.errors

from eventsource.store._staging import Plan, StagedAppends, append_plan

if TYPE_CHECKING:
    from eventsource.store._async import AsyncEventStore
    from eventsource.store._sync import EventStore

__all__ = ["AsyncGroupCommit", "Entry", "GroupCommit", "each_alone", "group_plan"]

# Appends written by one statement at most (the rest wait for the next one).
MAX_GROUP = 256
# Writes under way at once (each alone, or a group): more of them overlap the round trips and
# commits, fewer make bigger groups.
WRITERS = 2


class Entry:
    """One append waiting in the queue: its staged events, then its error (if any)."""

    __slots__ = ("done", "error", "lead", "staged", "wake")

    def __init__(self, staged: StagedAppends) -> None:
        self.staged = staged
        self.done = False  # written, or failed with ``error``
        self.error: BaseException | None = None
        self.lead = False  # woken to write the next group
        self.wake: Any = None  # how the writer that takes it wakes its caller


def take(queue: list[Entry], group: list[Entry]) -> list[Entry]:
    """Move the oldest appends of ``queue`` to ``group`` (which may hold some already) and
    return it: up to ``MAX_GROUP``, no two of them to one stream (a later append to a stream
    of the group waits for the next one, so appends to one stream keep their order)."""
    if not queue:
        return group
    rest: list[Entry] = []
    streams: set[str] = {name for entry in group for name in entry.staged.stream_ids()}
    for entry in queue:
        names = entry.staged.stream_ids()
        if len(group) < MAX_GROUP and streams.isdisjoint(names):
            group.append(entry)
            streams.update(names)
        else:
            rest.append(entry)
    queue[:] = rest
    return group


def failed(group: list[Entry], error: BaseException) -> None:
    """``group``'s write failed with ``error``: it is the error of each append not written."""
    for entry in group:
        if not entry.done:
            entry.error = error
            entry.done = True


def group_plan(group: list[Entry], queries: Any, partitions: int) -> Plan:
    """The one statement that writes the appends of ``group`` (each its own streams) whose
    claims hold; those it writes are done, the others are left to be written one by one."""
    joined = StagedAppends.joined([entry.staged for entry in group])
    try:
        rows = yield (
            queries.direct["append_group"],
            joined.group_params(partitions, all_or_none=False),
        )
    except psycopg.errors.UniqueViolation:
        rows = []  # a racing writer: nothing was written
    by_stream = {row[0]: row for row in rows}  # once for the group, not once per append
    for entry in group:
        entry.done = entry.staged.written(by_stream, queries.schema) is not None
    return []


def each_alone(group: list[Entry], queries: Any, partitions: int) -> Iterator[tuple[Entry, Plan]]:
    """The plans that write the appends of ``group`` not yet written, one by one."""
    for entry in group:
        if not entry.done:
            yield entry, append_plan(entry.staged, queries, partitions, autocommit=True)


class GroupCommit:
    """Group commit for the threads of a sync ``EventStore`` (see the module).

    Up to ``WRITERS`` threads write at once, each its own append. A thread that comes while
    they are all under way queues its append and waits; a writer that is done wakes the
    oldest waiting thread to write the queue as one group, or else stops writing.
    """

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._queue: list[Entry] = []
        self._writers = 0

    def append(self, staged: StagedAppends, partitions: int) -> None:
        """Write ``staged`` (one standalone append), alone or with others; its pending
        results are filled, or its own error is raised."""
        entry = Entry(staged)
        with self._lock:
            if self._writers < WRITERS:
                self._writers += 1
                entry.lead = True
            else:
                entry.wake = threading.Lock()
                entry.wake.acquire()
                self._queue.append(entry)
        if entry.wake is not None:
            entry.wake.acquire()  # released when written, or when it is to write a group
        if entry.lead:
            self._lead(entry, partitions)
        if entry.error is not None:
            raise entry.error

    def _lead(self, entry: Entry, partitions: int) -> None:
        """Write ``entry`` with the appends queued, then wake the next writer (or stop)."""
        with self._lock:
            group = take(self._queue, [entry])
        try:
            self._store._write_group(group, partitions)
        except BaseException as exc:  # not an append's own error: every one of the group's
            failed(group, exc)
        finally:
            with self._lock:
                following = self._queue.pop(0) if self._queue else None
                if following is None:
                    self._writers -= 1
                else:
                    following.lead = True
            for member in group[1:]:
                member.wake.release()
            if following is not None:
                following.wake.release()


class AsyncGroupCommit:
    """Group commit for the tasks of an ``AsyncEventStore`` (see the module).

    Up to ``WRITERS`` tasks write at once, each its own append. A task that comes while they
    are all under way queues its append and waits; a writer that is done starts a task of the
    store's that writes the queue, group by group (so that a caller's cancellation never cuts
    another append's write short). A cancelled caller whose append is still queued leaves it
    out.
    """

    def __init__(self, store: AsyncEventStore) -> None:
        self._store = store
        self._queue: list[Entry] = []
        self._writers = 0
        self._flushers: set[asyncio.Task[None]] = set()

    async def append(self, staged: StagedAppends, partitions: int) -> None:
        """Write ``staged`` (one standalone append), alone or with others; its pending
        results are filled, or its own error is raised."""
        entry = Entry(staged)
        if self._writers < WRITERS:
            self._writers += 1
            try:
                await self._store._write_alone(staged, partitions)
            finally:
                self._next(partitions)
            return
        entry.wake = asyncio.get_running_loop().create_future()
        self._queue.append(entry)
        try:
            await entry.wake
        except asyncio.CancelledError:
            if entry in self._queue:  # not taken yet: never written
                self._queue.remove(entry)
            raise
        if entry.error is not None:
            raise entry.error

    def _next(self, partitions: int) -> None:
        """After a write: start a task that writes the queue, or stop writing."""
        if self._queue:
            task = asyncio.get_running_loop().create_task(self._flush(partitions))
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        else:
            self._writers -= 1

    async def _flush(self, partitions: int) -> None:
        """Write the queue, group by group, until it is empty."""
        try:
            while self._queue:
                # A caller cancelled while queued is left out (its task drops the entry when
                # it resumes, which may be after this write).
                self._queue[:] = [entry for entry in self._queue if not entry.wake.cancelled()]
                group = take(self._queue, [])
                if not group:
                    break
                try:
                    await self._store._write_group(group, partitions)
                except BaseException as exc:  # not an append's own error: every one of the group's
                    failed(group, exc)
                    if not isinstance(exc, Exception):
                        raise  # cancelled: the loop is closing
                finally:
                    for entry in group:
                        if not entry.wake.done():
                            entry.wake.set_result(None)
        except BaseException as exc:  # cancelled (the loop is closing): nothing more is written
            for entry in self._queue:
                entry.error = exc
                if not entry.wake.done():
                    entry.wake.set_result(None)
            self._queue.clear()
            raise
        finally:
            self._writers -= 1
