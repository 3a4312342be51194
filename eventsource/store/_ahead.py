"""Reading a partition one page ahead of the caller: on a thread (sync), as a task (async).

``iter_partition`` of both stores hands out a partition page by page; the next page's query is
already on its way while the caller decodes and handles the current one. The two readers are
written apart because they overlap the work differently: a thread waits for the server with
the GIL released, a task waits in the event loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from typing import TYPE_CHECKING

from eventsource.store._reading import fetch_page
from eventsource.store._types import RecordedEvent, decode_records

if TYPE_CHECKING:
    from eventsource.store._async import AsyncEventStore
    from eventsource.store._sync import EventStore

__all__ = ["read_ahead", "read_ahead_async"]

Page = list[RecordedEvent]


class _PageReader:
    """Reads the pages of a partition after the first one, on a thread of its own."""

    def __init__(self, store: EventStore, partition: int, after: int, batch: int) -> None:
        self._store = store
        self._params = {"partition": partition, "after": after, "limit": batch}
        self._pages: queue.Queue[Page | BaseException] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"eventsource-pages-{partition}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        params = self._params
        try:
            with self._store._raw() as conn:
                while not self._stop.is_set():
                    page = fetch_page(conn, self._store._queries.read_partition_page, params)
                    if not self._put(page) or len(page) < params["limit"]:
                        return
                    params["after"] = page[-1].position
        except BaseException as exc:  # handed to the caller, raised there
            self._put(exc)

    def _put(self, item: Page | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._pages.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def next_page(self) -> Page:
        """The next page (shorter than a batch at the end); the reader's error, raised."""
        item = self._pages.get()
        if isinstance(item, BaseException):
            raise item
        return item

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
    page = store._partition_rows(partition, after, batch)
    if decode:
        decode_records(page)
    yield from page
    if len(page) < batch:
        return
    reader = _PageReader(store, partition, page[-1].position, batch)
    try:
        while page := reader.next_page():
            if decode:
                decode_records(page)
            yield from page
            if len(page) < batch:
                return
    finally:
        reader.close()


async def read_ahead_async(
    store: AsyncEventStore, partition: int, after: int, batch: int, decode: bool
) -> AsyncIterator[RecordedEvent]:
    """Every event of a partition after ``after``; each next page's query is sent (as a task)
    before the current page is decoded and handed out."""
    page = await store._partition_rows(partition, after, batch)
    while True:
        ahead = None
        try:
            if len(page) == batch:
                ahead = asyncio.ensure_future(
                    store._partition_rows(partition, page[-1].position, batch)
                )
                await asyncio.sleep(0)  # let it send its query
            if decode:
                decode_records(page)
            for record in page:
                yield record
        except BaseException:  # the caller stopped early (or failed): drop the next page
            if ahead is not None:
                ahead.cancel()
                with suppress(BaseException):
                    await ahead
            raise
        if ahead is None:
            return
        page = await ahead
