"""The options the command groups share, and the bounds of the workers' options."""

from __future__ import annotations

from typing import Annotated

import typer

from eventsource._checks import check_name

__all__ = [
    "MAX_LEASE",
    "MAX_SECONDS",
    "MIN_LEASE",
    "MIN_POLL_INTERVAL",
    "AsJson",
    "DatabaseUrl",
    "Schema",
    "WorkerId",
    "check_worker_id",
]

# Bounds of the worker options: a day at most, so that no wait overflows a thread's timer.
MAX_SECONDS = 86400.0
MIN_LEASE, MAX_LEASE = 0.5, 3600.0  # as EVENTSOURCE_COMMAND_LEASE
MIN_POLL_INTERVAL = 0.01

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="EVENTSOURCE_DATABASE_URL",
        show_envvar=True,
        help="PostgreSQL URL; unset: the embedded server.",
        show_default=False,
    ),
]
Schema = Annotated[
    str,
    typer.Option("--schema", envvar="EVENTSOURCE_SCHEMA", help="Schema of the framework's tables."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
WorkerId = Annotated[
    str | None, typer.Option("--worker-id", help="This worker's id (default host:pid).")
]


def check_worker_id(worker_id: str | None) -> None:
    """A given ``--worker-id`` is a valid name (ValueError naming the option otherwise)."""
    if worker_id is not None:
        check_name(worker_id, "--worker-id")
