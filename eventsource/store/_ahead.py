"""Reading a partition one page ahead of the caller: on a thread (sync), as a task (async).

``iter_partition`` of both stores hands out a partition page by page; the next page's query is
already on its way while the caller decodes and handles the current one. The two readers are
written apart because they overlap the work differently: a thread waits for the server with
the GIL released, a task waits in the event loop. The thread hands each page over as libpq
gave it and sends the next page's query at once; the caller loads the rows. Loading takes the
GIL, which the caller holds anyway, so the thread needs it only for a moment between pages and
the server is not kept waiting for it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from datetime import tzinfo
from typing import TYPE_CHECKING

from eventsource.store._reading import (
    POSITION,
    EventRow,
    Unloaded,
    fetch_rows,
    fetch_rows_async,
    fetch_unloaded,
    handed_out,
)
from eventsource.store._records import RecordedEvent

if TYPE_CHECKING:
    from eventsource.store._async import AsyncEventStore
    from eventsource.store._sync import EventStore

__all__ = ["read_ahead", "read_ahead_async"]

Page = tuple[list[EventRow], tzinfo]  # a page's rows, and the time zone of their times


class _PageReader:
    """Reads the pages of a partition after the first one, on a thread of its own."""

    def __init__(self, store: EventStore, partition: int, after: int, batch: int) -> None:
        self._store = store
        self._params = {"partition": partition, "after": after, "limit": batch}
        self._pages: queue.Queue[Unloaded | BaseException] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"eventsource-pages-{partition}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        """Send each page's query as soon as the page before it is handed over (its last
        position read from the result), until a short page; an error is handed over too."""
        params = self._params
        try:
            with self._store._raw() as conn:
                statement = self._store._queries.direct["read_partition_page"]
                loader = None
                while not self._stop.is_set():
                    page = fetch_unloaded(conn, statement, params, loader)
                    loader = page.loader
                    full = page.result.ntuples == params["limit"]
                    if full:  # the next page's position, before this one is handed over
                        params["after"] = page.last_position()
                    if not self._put(page) or not full:
                        return
        except BaseException as exc:  # handed to the caller, raised there
            self._put(exc)

    def _put(self, item: Unloaded | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._pages.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def next_page(self) -> Page:
        """The next page's rows (shorter than a batch at the end) and the time zone of their
        times, loaded here; the reader's error, raised."""
        item = self._pages.get()
        if isinstance(item, BaseException):
            raise item
        return item.rows(), item.timezone

    def close(self) -> None:
        """Stop reading ahead (the caller stopped early, or reached the end)."""
        self._stop.set()
        with suppress(queue.Empty):
            self._pages.get_nowait()
        self._thread.join(timeout=10)


def read_ahead(
    store: EventStore, partition: int, after: int, batch: int, decode: bool
) -> Iterator[RecordedEvent]:
    """Every event of a partition after ``after``; pages after the first read on a thread."""
    params = {"partition": partition, "after": after, "limit": batch}
    with store._raw() as conn:
        rows, timezone = fetch_rows(conn, store._queries.direct["read_partition_page"], params)
    if len(rows) < batch:
        yield from handed_out(rows, timezone, decode)
        return
    reader = _PageReader(store, partition, rows[-1][POSITION], batch)  # the second page's on
    try:
        yield from handed_out(rows, timezone, decode)
        while True:
            rows, timezone = reader.next_page()
            yield from handed_out(rows, timezone, decode)
            if len(rows) < batch:
                return
    finally:
        reader.close()


async def _page(store: AsyncEventStore, partition: int, after: int, batch: int) -> Page:
    params = {"partition": partition, "after": after, "limit": batch}
    async with store._raw() as conn:
        return await fetch_rows_async(conn, store._queries.direct["read_partition_page"], params)


async def read_ahead_async(
    store: AsyncEventStore, partition: int, after: int, batch: int, decode: bool
) -> AsyncIterator[RecordedEvent]:
    """Every event of a partition after ``after``; each next page's query is sent (as a task)
    before the current page is decoded and handed out."""
    rows, timezone = await _page(store, partition, after, batch)
    while True:
        ahead = None
        try:
            if len(rows) == batch:
                ahead = asyncio.ensure_future(_page(store, partition, rows[-1][POSITION], batch))
                await asyncio.sleep(0)  # let it send its query
            for record in handed_out(rows, timezone, decode):
                yield record
        except BaseException:  # the caller stopped early (or failed): drop the next page
            if ahead is not None:
                ahead.cancel()
                with suppress(BaseException):
                    await ahead
            raise
        if ahead is None:
            return
        rows, timezone = await ahead
