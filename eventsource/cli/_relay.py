"""`eventsource relay`: relay the log to NATS JetStream, and show how far it got."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from eventsource._checks import check_seconds
from eventsource._config import Settings
from eventsource.cli._app import fail, open_store, show
from eventsource.cli._options import (
    MAX_LEASE,
    MIN_LEASE,
    AsJson,
    WorkerId,
    check_worker_id,
    with_settings,
)
from eventsource.cli._worker import run_until_stopped

relay_app = typer.Typer(
    help="Relay the partitioned log to NATS JetStream, in order, once.", no_args_is_help=True
)

Stream = Annotated[str, typer.Option("--stream", help="The JetStream stream (created if missing).")]
SubjectPrefix = Annotated[
    str, typer.Option("--subject-prefix", help="Subjects are <prefix>.<partition>.")
]


@relay_app.command("run")
@with_settings()
def relay_run(  # noqa: PLR0917 - typer maps parameters to options
    settings: Settings,
    nats_url: Annotated[str, typer.Argument(help="The NATS server, e.g. nats://127.0.0.1:4222.")],
    stream: Stream = "EVENTS",
    subject_prefix: SubjectPrefix = "events",
    worker_id: WorkerId = None,
    lease_ttl: Annotated[
        float, typer.Option("--lease-ttl", help="Seconds a lease outlives its heartbeat.")
    ] = 10.0,
    duplicate_window: Annotated[
        float,
        typer.Option(
            "--duplicate-window",
            help="The stream's de-duplication window in seconds (at least the lease TTL + 30).",
        ),
    ] = 120.0,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", min=1, max=100_000, help="Events per partition per window."),
    ] = 500,
) -> None:
    """Relay the log to JetStream until SIGTERM/SIGINT; processes share partitions by lease."""
    from eventsource import relay  # noqa: PLC0415 - only this command needs it

    check_worker_id(worker_id)
    check_seconds(lease_ttl, "--lease-ttl", low=MIN_LEASE, high=MAX_LEASE)
    check_seconds(duplicate_window, "--duplicate-window", low=1, high=86400 * 7)
    relay.check_nats_url(nats_url)
    relay.check_stream_name(stream)
    relay.check_subject_prefix(subject_prefix)
    try:
        sink = relay.NatsSink(
            nats_url,
            stream=stream,
            subject_prefix=subject_prefix,
            duplicate_window=duplicate_window,
        )
    except ImportError as exc:
        fail(str(exc), 1)
    with open_store(settings) as store:
        worker = relay.RelayWorker(
            store,
            sink,
            worker_id=worker_id,
            lease_ttl=lease_ttl,
            heartbeat_interval=min(2.0, lease_ttl / 3),
            batch_size=batch_size,
        )
        run_until_stopped(worker)


@relay_app.command("status")
@with_settings(before="as_json")
def relay_status(settings: Settings, as_json: AsJson = False) -> None:
    """Per relay and partition: relayed position, head, lag, owner, last update, error."""
    from eventsource import relay  # noqa: PLC0415

    with open_store(settings) as store:
        rows = relay.status_rows(store)
        show(as_json, rows, _status_table(rows))


def _status_table(rows: list[dict[str, Any]]) -> Table:
    """The rich table of ``relay status``: one row per relay and partition."""
    table = Table(title="relay")
    for column in ("relay", "partition", "position", "head", "lag", "owner", "updated", "error"):
        table.add_column(column)
    for r in rows:
        error = r["error"].strip().splitlines()[-1] if r["error"] else ""
        table.add_row(
            r["relay"],
            str(r["partition"]),
            str(r["position"]),
            str(r["head"]),
            str(r["lag"]),
            r["owner"] or "",
            (r["updated_at"] or "")[11:19],
            error,
        )
    return table
