"""`eventsource worker run`: a command worker process."""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
from typing import Annotated, Protocol

import typer

from eventsource._checks import check_name, check_seconds
from eventsource._config import Settings
from eventsource.cli._app import open_store, serve_worker_metrics
from eventsource.cli._options import (
    MAX_LEASE,
    MAX_SECONDS,
    MIN_LEASE,
    MIN_POLL_INTERVAL,
    WorkerId,
    check_worker_id,
    with_settings,
)

worker_app = typer.Typer(help="Run command workers.", no_args_is_help=True)


def _freeze_startup_objects() -> None:
    """Move what start-up loaded (modules, classes, settings) out of the collector's reach.

    A worker allocates many short-lived objects per batch; every full collection would
    otherwise rescan the hundred thousand long-lived objects of its imports as well.
    """
    gc.collect()
    gc.freeze()


class _Worker(Protocol):
    """A worker process's loop: ``run`` until ``stop`` is called (from a signal handler)."""

    def run(self) -> object:
        """Work until stopped."""

    def stop(self) -> object:
        """Ask ``run`` to return."""


def run_until_stopped(worker: _Worker) -> None:
    """Run ``worker`` until SIGTERM or SIGINT stops it, what start-up loaded frozen first:
    the end of every `run` command (command, projection and relay workers)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    _freeze_startup_objects()
    worker.run()


def _import_handlers(module_name: str) -> None:
    """Import the module that registers the handlers; ValueError naming what failed."""
    check_name(module_name, "MODULE")
    if not module_name or module_name.startswith(".") or ":" in module_name:
        raise ValueError(f"expected a module name such as myapp.handlers, got {module_name!r}")
    sys.path.insert(0, os.getcwd())
    try:
        importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None


@worker_app.command("run")
@with_settings()
def worker_run(  # noqa: PLR0917 - typer maps parameters to options
    settings: Settings,
    modules: Annotated[
        list[str], typer.Argument(help="Modules whose @handler functions this worker runs.")
    ],
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", "-q", help="A queue to work on (repeat it; default: default)."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=256, help="Handler threads.")
    ] = 4,
    worker_id: WorkerId = None,
    lease: Annotated[
        float | None,
        typer.Option(
            "--lease",
            min=MIN_LEASE,
            max=MAX_LEASE,
            help="Seconds a command stays leased without a heartbeat.",
        ),
    ] = None,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            max=MAX_SECONDS,
            help="Seconds to let running handlers finish on stop.",
        ),
    ] = 30.0,
    poll_only: Annotated[
        bool,
        typer.Option("--poll-only", help="No LISTEN/NOTIFY (e.g. behind PgBouncer)."),
    ] = False,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            min=MIN_POLL_INTERVAL,
            max=MAX_SECONDS,
            help="Seconds between polls.",
        ),
    ] = 1.0,
) -> None:
    """Run command handlers until SIGTERM/SIGINT; workers compete for commands."""
    from eventsource.commands import CommandWorker, check_queues_served  # noqa: PLC0415

    # Checked here too, so that errors name the options (the worker checks its arguments).
    for name in queue or ():
        check_name(name, "--queue")
    check_worker_id(worker_id)
    if lease is not None:
        check_seconds(lease, "--lease", low=MIN_LEASE, high=MAX_LEASE)
    check_seconds(grace, "--grace", high=MAX_SECONDS)
    check_seconds(poll_interval, "--poll-interval", low=MIN_POLL_INTERVAL, high=MAX_SECONDS)
    for module_name in modules:
        _import_handlers(module_name)
    with open_store(settings) as store:
        try:
            check_queues_served(store, queue or ["default"])
        except ValueError as exc:
            raise ValueError(f"{exc} (--queue)") from None
        serve_worker_metrics(settings)
        worker = CommandWorker(
            store,
            queue or ["default"],
            concurrency=concurrency,
            worker_id=worker_id,
            lease=lease if lease is not None else settings.command_lease,
            grace=grace,
            listen=not poll_only,
            poll_interval=poll_interval,
            backoff_base=settings.command_backoff_base,
            backoff_max=settings.command_backoff_max,
        )
        run_until_stopped(worker)
