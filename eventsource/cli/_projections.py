"""`eventsource projections`: run workers, replay, status, retry and skip."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any

import typer
from rich.table import Table

from eventsource._checks import BIGINT_MAX, INT_MAX, check_name
from eventsource._config import Settings
from eventsource.cli._app import (
    confirm,
    console,
    err_console,
    fail,
    open_store,
    report_problems,
    serve_worker_metrics,
    show,
)
from eventsource.cli._options import (
    AsJson,
    Command,
    WorkerId,
    Yes,
    check_worker_id,
    keyword_option,
    option_set,
    with_settings,
)
from eventsource.cli._worker import _freeze_startup_objects, run_until_stopped

SourceUrl = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="Read the log relayed to NATS JetStream at this URL instead of PostgreSQL.",
        show_default=False,
    ),
]
Stream = Annotated[str, typer.Option("--stream", help="With --source: the stream.")]
SubjectPrefix = Annotated[
    str, typer.Option("--subject-prefix", help="With --source: the subjects' prefix.")
]


def _jetstream_source(source: str | None, stream: str, subject_prefix: str) -> Any:
    """The JetStream source of ``--source`` (None without it); ValueError for bad options."""
    if source is None:
        return None
    from eventsource import relay  # noqa: PLC0415
    from projections import JetStreamSource  # noqa: PLC0415

    relay.check_nats_url(source)
    relay.check_stream_name(stream)
    relay.check_subject_prefix(subject_prefix)
    try:
        return JetStreamSource(source, stream=stream, subject_prefix=subject_prefix)
    except ImportError as exc:
        fail(str(exc), 1)


def with_log_source(*, before: str | None = None) -> Callable[[Command], Command]:
    """A decorator giving a command ``--source``, ``--stream`` and ``--subject-prefix`` (before
    its option ``before``, else after its last) and its parameter ``log_source`` the JetStream
    source they name (None without ``--source``), as ``option_set`` does."""
    return option_set(
        "log_source",
        [
            keyword_option("source", SourceUrl, None),
            keyword_option("stream", Stream, "EVENTS"),
            keyword_option("subject_prefix", SubjectPrefix, "events"),
        ],
        _jetstream_source,
        before=before,
    )


projections_app = typer.Typer(
    help="Run, replay and inspect projections (read models).", no_args_is_help=True
)


def _load_projection(target: str) -> Any:
    """The Projection instance for MODULE:CLASS; ValueError naming what failed to load."""
    from projections import Projection  # noqa: PLC0415 - the store CLI does not need it

    check_name(target, "MODULE:CLASS")
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"expected MODULE:CLASS, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"module {module_name!r} has no attribute {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Projection)):
        raise ValueError(f"{target!r} is not a Projection subclass")
    return cls()


@projections_app.command("run")
@with_settings()
@with_log_source()
def projections_run(
    settings: Settings,
    log_source: Any,
    targets: Annotated[list[str], typer.Argument(help="Projections as MODULE:CLASS.")],
    worker_id: WorkerId = None,
) -> None:
    """Run projection workers until SIGTERM/SIGINT; processes share partitions via leases."""
    import projections  # noqa: PLC0415

    check_worker_id(worker_id)
    loaded = [_load_projection(t) for t in targets]
    with open_store(settings) as store:
        serve_worker_metrics(settings)
        worker = projections.ProjectionWorker(store, loaded, worker_id=worker_id, source=log_source)
        run_until_stopped(worker)


@projections_app.command("replay")
@with_settings()
@with_log_source()
def projections_replay(
    settings: Settings,
    log_source: Any,
    target: Annotated[str, typer.Argument(help="The projection as MODULE:CLASS.")],
    yes: Yes = False,
) -> None:
    """Rebuild a read model from offset 0 (live workers step aside meanwhile)."""
    import projections  # noqa: PLC0415

    projection = _load_projection(target)
    confirm(
        yes,
        f"Replay {projection.name!r}: its read model is reset and rebuilt. Continue?",
        "replay empties the read model first: pass --yes to confirm",
    )
    with open_store(settings) as store:
        _freeze_startup_objects()
        try:
            applied = projections.replay(store, projection, console=err_console, source=log_source)
        finally:
            if log_source is not None:
                log_source.close()
    console.print(f"replayed {projection.name}: {applied} events applied", highlight=False)


@projections_app.command("status")
@with_settings(before="as_json")
@with_log_source(before="check")
def projections_status(
    settings: Settings,
    log_source: Any,
    as_json: AsJson = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 1 (saying why) if a partition is stopped on an error or lags too much.",
        ),
    ] = False,
    max_lag: Annotated[
        int | None,
        typer.Option(
            "--max-lag",
            min=0,
            max=BIGINT_MAX,
            help="With --check: the most events a partition may lag.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Per projection and partition: position, head, lag, owner, last update, error.

    With --source, the heads are those of the relayed log in JetStream (for a read model built
    from it), read from the stream's last message of each partition.
    """
    import projections  # noqa: PLC0415
    from eventsource.ops import projection_problems  # noqa: PLC0415

    if max_lag is not None and not check:
        raise ValueError("--max-lag goes with --check")
    with open_store(settings) as store:
        rows = projections.status(store)
        if log_source is not None:
            try:
                log_source.bind(store)
                heads = log_source.heads()
            finally:
                log_source.close()
            rows = [replace(r, head=heads.get(r.partition, 0)) for r in rows]
        show(as_json, [r.as_json() for r in rows], _status_table(rows))
        if check:
            report_problems(projection_problems(rows, max_lag))


def _status_table(rows: list[Any]) -> Table:
    """The rich table of ``projections status``: one row per projection and partition."""
    table = Table(title="projections")
    for column in (
        "projection",
        "partition",
        "position",
        "head",
        "lag",
        "owner",
        "updated",
        "error",
    ):
        table.add_column(column)
    for r in rows:
        error = ""
        if r.error:
            last = r.error.strip().splitlines()[-1]
            error = f"at {r.error_position} after {r.error_attempts} attempts: {last}"
        owner = r.owner or (f"paused by {r.paused_by}" if r.paused_by else "")
        table.add_row(
            r.projection,
            str(r.partition),
            str(r.position),
            str(r.head),
            str(r.lag),
            owner,
            r.updated_at.strftime("%H:%M:%S"),
            error,
        )
    return table


def _partition_command(action: str) -> Any:
    """The `projections retry` or `projections skip` command for a stopped partition."""

    @with_settings()
    def command(
        settings: Settings,
        name: Annotated[str, typer.Argument(help="The projection's name.")],
        partition: Annotated[int, typer.Option("--partition", "-p", min=0, max=INT_MAX)],
    ) -> None:
        import projections  # noqa: PLC0415

        check_name(name, "NAME (the projection's name)")
        with open_store(settings) as store:
            if action == "retry":
                position = projections.retry(store, name, partition)
                console.print(f"{name} partition {partition}: retrying after {position}")
            else:
                position, event_type = projections.skip(store, name, partition)
                console.print(
                    f"{name} partition {partition}: skipped the {event_type} event at"
                    f" {position} (recorded in projection_skips)"
                )

    return command


projections_app.command(
    "retry", help="Retry the event a partition stopped on (after fixing the handler)."
)(_partition_command("retry"))
projections_app.command(
    "skip", help="Skip the event a partition stopped on; the skip is recorded."
)(_partition_command("skip"))
