"""Operating projections: replay (rebuild), status, retry and skip of a stopped partition.

Waiting for a projection to pass an append (read-your-writes) is in ``_wait``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from eventsource import (
    AsyncEventStore,
    EventSourceError,
    EventStore,
    ProjectionTimeout,
    ReplayError,
)
from eventsource._internal import (
    check_partition,
    check_seconds,
    default_worker_id,
    driver_connection,
    fetch,
    fetch_async,
)
from projections._projection import Projection, check_projection_name
from projections._queries import projection_queries
from projections._reactor import Reactor
from projections._worker import ProjectionWorker

__all__ = [
    "PartitionStatus",
    "ProjectionTimeout",
    "replay",
    "retry",
    "skip",
    "status",
    "status_async",
]


MAX_WAIT = 86400.0  # seconds: the longest wait_for and replay take-over that can be asked for


@dataclass(frozen=True)
class PartitionStatus:
    """One (projection, partition) as `eventsource projections status` shows it."""

    projection: str
    partition: int
    position: int
    head: int
    owner: str | None
    lease_until: datetime | None
    updated_at: datetime
    error: str | None
    error_position: int | None
    error_attempts: int
    error_at: datetime | None
    paused_by: str | None

    @property
    def lag(self) -> int:
        """Events of the partition not yet applied (0 when caught up)."""
        return max(0, self.head - self.position)

    def as_json(self) -> dict[str, Any]:
        """The fields and the lag as JSON values (times in ISO 8601)."""
        data = asdict(self)
        data["lag"] = self.lag
        for key in ("lease_until", "updated_at", "error_at"):
            if data[key] is not None:
                data[key] = data[key].isoformat()
        return data


def status(store: EventStore) -> list[PartitionStatus]:
    """Every projection's partitions: position, head, lag, owner, last update, error."""
    with store._raw() as conn:
        rows = fetch(conn, projection_queries(store).status)
    return [PartitionStatus(*row) for row in rows]


async def status_async(store: AsyncEventStore) -> list[PartitionStatus]:
    """``status`` for an ``AsyncEventStore``."""
    async with store._raw() as conn:
        rows = await fetch_async(conn, projection_queries(store).status)
    return [PartitionStatus(*row) for row in rows]


def retry(store: EventStore, projection: str, partition: int) -> int:
    """Clear a stopped partition's error so workers retry its event; returns its position."""
    row = _on_stopped(store, projection_queries(store).retry, projection, partition)
    return int(row[0])


def skip(store: EventStore, projection: str, partition: int) -> tuple[int, str | None]:
    """Skip a stopped partition's poison event (logged in projection_skips); its position."""
    row = _on_stopped(store, projection_queries(store).skip, projection, partition)
    return int(row[0]), row[1]


def _on_stopped(store: EventStore, sql: str, projection: str, partition: int) -> tuple[Any, ...]:
    """Run an operator's statement on a stopped partition, then wake its workers."""
    projection = check_projection_name(projection)
    partition = check_partition(partition, store.partitions)
    with store._raw() as conn:
        rows = fetch(conn, sql, {"projection": projection, "partition": partition})
    if not rows:
        raise EventSourceError(
            f"projection {projection!r} partition {partition} is not stopped on an error"
        )
    store._announcer.announce((partition,))
    return rows[0]


def replay(
    store: EventStore,
    projection: Projection,
    *,
    console: Console | None = None,
    progress: bool = True,
    takeover_timeout: float = 30.0,
    **options: Any,
) -> int:
    """Rebuild a read model from offset 0 while live workers step aside; events applied.

    Takes every lease of the projection (workers release theirs at their next heartbeat),
    calls ``reset`` and sets the checkpoints to 0 in one transaction (a failing ``reset``
    changes nothing), runs every partition to its head with a progress bar, then hands the
    partitions back. Writers may keep appending meanwhile. ``options`` are the worker's
    (``source=JetStreamSource(...)`` replays from the relayed log).
    """
    if not isinstance(projection, Projection):
        raise TypeError(f"replay takes a Projection instance, got {projection!r}")
    takeover_timeout = check_seconds(takeover_timeout, "takeover_timeout", high=MAX_WAIT)
    if isinstance(projection, Reactor):
        raise ReplayError(
            f"{projection.name!r} is a reactor: replaying it would enqueue its commands again"
        )
    worker = ProjectionWorker(
        store,
        [projection],
        worker_id=f"replay:{default_worker_id()}",
        exclusive=True,
        **options,
    )
    queries = worker.queries
    key = {"projection": projection.name, "worker": worker.worker_id}
    worker.setup()
    with store._raw() as conn:
        if not fetch(conn, queries.pause, {**key, "ttl": worker.lease_ttl}):
            raise ReplayError(
                f"projection {projection.name!r} is being replayed by another process"
            )
    group = worker._groups[0]
    try:
        _take_over(worker, store.partitions, takeover_timeout)
        # Not translated: errors of the projection's own reset() are its own.
        with store.engine.begin() as tx:
            raw = driver_connection(tx)
            locked = fetch(raw, queries.lock_all, key)
            if len(locked) != store.partitions:
                raise ReplayError("lost a lease during the takeover; run the replay again")
            projection.reset(tx)
            fetch(raw, queries.reset_checkpoints, key)
        for lease in group.leases.values():
            lease.position, lease.failed = 0, False
        return _run_to_head(worker, console or Console(stderr=True), progress)
    finally:
        worker.shutdown()
        with store._raw() as conn:
            fetch(conn, queries.unpause, {**key, "replayed": True})


def _take_over(worker: ProjectionWorker, partitions: int, timeout: float) -> None:
    """Heartbeat until the replay's worker holds every partition (``ReplayError`` on timeout)."""
    deadline = time.monotonic() + timeout
    group = worker._groups[0]
    while True:
        worker.heartbeat()
        if len(group.leases) == partitions:
            return
        if time.monotonic() > deadline:
            raise ReplayError(
                f"could not take over {partitions - len(group.leases)} partitions of"
                f" {group.name!r} within {timeout}s: are their workers alive and responsive?"
            )
        time.sleep(0.2)


def _run_to_head(worker: ProjectionWorker, console: Console, show: bool) -> int:
    """Apply batches until every partition is at its head or stopped; the events applied.

    The heads are read again whenever the held partitions have reached them (writers keep
    appending during a replay), the leases are renewed on the worker's heartbeat interval,
    and ``show`` draws a progress bar of the events applied on ``console``.
    """
    group = worker._groups[0]
    applied = 0
    columns = (
        TextColumn("[bold]replay[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} events/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not show, transient=False) as bar:
        heads = worker.source.heads()
        task = bar.add_task(group.name, total=sum(heads.values()), rate="-")
        started = time.monotonic()
        last_beat = time.monotonic()
        while True:
            behind = group.behind(heads)
            now = time.monotonic()
            pending = [p for p in behind if group.retry_at.get(p, 0.0) <= now]
            if behind and not pending:  # only partitions waiting to retry a failed event
                time.sleep(min(group.retry_at[p] for p in behind) - now)
                continue
            if not pending:
                heads = worker.source.heads()  # writers may have appended meanwhile
                bar.update(task, total=max(sum(heads.values()), applied))
                if not group.behind(heads):
                    break
                continue
            for partition in pending:
                lease = group.leases.get(partition)
                if lease is None:
                    raise ReplayError(f"lost the lease of partition {partition} during the replay")
                count = worker.batch(group, partition, lease)
                applied += count
                elapsed = max(time.monotonic() - started, 1e-9)
                bar.update(task, advance=count, rate=f"{applied / elapsed:,.0f}")
            if time.monotonic() - last_beat >= worker.heartbeat_interval:
                worker.heartbeat()
                last_beat = time.monotonic()
    failed = sorted(p for p, lease in group.leases.items() if lease.failed)
    if failed:
        console.print(
            f"[yellow]partitions {failed} stopped on poison events: see"
            " `eventsource projections status`[/]"
        )
    return applied
