"""The `eventsource` command line (typer): schema management and the demo.

Every command takes ``--database-url`` (default: ``EVENTSOURCE_DATABASE_URL``, else the
embedded server) and ``--schema``. Exit codes: 0 success, 1 failure, 2 bad usage; errors are
one line that says what to do. Bad usage (an option out of range, a bad name, a bad
``EVENTSOURCE_*`` variable) names the option or variable at fault, and nothing is written.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._checks import (
    BIGINT_MAX,
    INT_MAX,
    check_database_url,
    check_name,
    check_seconds,
)
from ._commands import MAX_DELAY
from ._config import Settings
from ._core import safe_url
from ._errors import EventSourceError
from ._logging import configure_logging, get_logger
from ._queries import quote_schema
from ._store import EventStore

__all__ = ["app", "main"]

app = typer.Typer(
    name="eventsource",
    help="Event sourcing on PostgreSQL: event store, projections and command queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(
    help="Create, upgrade and inspect the eventsource schema.", no_args_is_help=True
)
app.add_typer(db_app, name="db")

console = Console()
err_console = Console(stderr=True)
log = get_logger("eventsource.cli")


def _click_module(name: str) -> Any:
    """A module of the click that typer runs on: its own copy (typer._click) in recent typer
    releases, click itself in older ones."""
    try:
        return importlib.import_module(f"typer._click.{name}")
    except ImportError:
        return importlib.import_module(f"click.{name}")


_click_core = _click_module("core")
_click_exceptions = _click_module("exceptions")
_click_globals = _click_module("globals")

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


def _one_line(message: str) -> str:
    """A message on one line (a multi-line one is joined with "; ")."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return "; ".join(lines) if lines else message


def _print_error(message: str) -> None:
    """``error: message`` on stderr, on one line (markup in the message is not interpreted)."""
    err_console.print(
        f"[bold red]error:[/] {escape(_one_line(message))}", highlight=False, soft_wrap=True
    )


def _fail(message: str, code: int) -> NoReturn:
    _print_error(message)
    raise typer.Exit(code)


def _origin(name: str, option: str) -> str:
    """How the user gave parameter ``name``: its environment variable if it came from there,
    else ``option`` (the flag or argument as typed)."""
    ctx = _click_globals.get_current_context(silent=True)
    if ctx is None or ctx.get_parameter_source(name) is not _click_core.ParameterSource.ENVIRONMENT:
        return option
    for param in ctx.command.params:
        if param.name == name and isinstance(param.envvar, str):
            return param.envvar
    return option


@contextmanager
def _cli_errors() -> Iterator[None]:
    """One line per failure: 2 for bad input, 1 for everything that went wrong at run time."""
    try:
        yield
    except typer.Exit:
        raise
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        _fail(f"invalid setting {where}: {first.get('msg')}", 2)
    except (ValueError, TypeError) as exc:
        _fail(str(exc), 2)
    except EventSourceError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _settings(database_url: str | None, schema: str, **extra: Any) -> Settings:
    """The settings of a command: its options over the ``EVENTSOURCE_*`` environment.

    A bad option is a ``ValueError`` naming it (or the variable it was read from).
    """
    if database_url:
        try:
            check_database_url(database_url)
        except ValueError as exc:
            raise ValueError(f"{_origin('database_url', '--database-url')}: {exc}") from None
    try:
        quote_schema(schema)
    except ValueError as exc:
        raise ValueError(f"{_origin('schema', '--schema')}: {exc}") from None
    values: dict[str, Any] = {"database_url": database_url, "db_schema": schema, **extra}
    settings = Settings(**{k: v for k, v in values.items() if v is not None})
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _open_store(settings: Settings) -> EventStore:
    store = EventStore.from_env(settings)
    log.debug("store opened", url=safe_url(store.url), schema=store.schema)
    return store


@db_app.command("upgrade")
def db_upgrade(
    database_url: DatabaseUrl = None,
    schema: Schema = "eventsource",
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            envvar="EVENTSOURCE_PARTITIONS",
            min=1,
            max=4096,
            help="Partition count when the schema is first created (default 16).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create the schema or upgrade it to this version (idempotent; safe to run concurrently)."""
    with _cli_errors():
        settings = _settings(database_url, schema, partitions=partitions)
        with _open_store(settings) as store:
            store.upgrade()
            status = store.status()
        console.print(
            f"schema [bold]{status.schema}[/] at revision {status.revision}"
            f" with {status.partitions} partitions on {safe_url(store.url)}",
            highlight=False,
            soft_wrap=True,
        )


@db_app.command("status")
def db_status(
    database_url: DatabaseUrl = None, schema: Schema = "eventsource", as_json: AsJson = False
) -> None:
    """Show the schema's revision, the code's head revision and the partition count."""
    with _cli_errors():
        settings = _settings(database_url, schema)
        with _open_store(settings) as store:
            status = store.status()
            heads = store.heads() if status.revision is not None else {}
        info = {
            "database": safe_url(store.url),
            "schema": status.schema,
            "revision": status.revision,
            "head": status.head,
            "up_to_date": status.up_to_date,
            "partitions": status.partitions,
            "events": sum(heads.values()),
        }
        if as_json:
            console.print_json(json.dumps(info))
        else:
            for key, value in info.items():
                console.print(f"{key:>11}: {value}", highlight=False)
        if not status.up_to_date:
            err_console.print("the schema is not up to date: run `eventsource db upgrade`")
            raise typer.Exit(1)


projections_app = typer.Typer(
    help="Run, replay and inspect projections (read models).", no_args_is_help=True
)
app.add_typer(projections_app, name="projections")


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
def projections_run(
    targets: Annotated[list[str], typer.Argument(help="Projections as MODULE:CLASS.")],
    worker_id: Annotated[
        str | None, typer.Option("--worker-id", help="This worker's id (default host:pid).")
    ] = None,
    database_url: DatabaseUrl = None,
    schema: Schema = "eventsource",
) -> None:
    """Run projection workers until SIGTERM/SIGINT; processes share partitions via leases."""
    import projections  # noqa: PLC0415

    with _cli_errors():
        if worker_id is not None:
            check_name(worker_id, "--worker-id")
        loaded = [_load_projection(t) for t in targets]
        settings = _settings(database_url, schema)
        with _open_store(settings) as store:
            worker = projections.ProjectionWorker(store, loaded, worker_id=worker_id)
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: worker.stop())
            _freeze_startup_objects()
            worker.run()


@projections_app.command("replay")
def projections_replay(
    target: Annotated[str, typer.Argument(help="The projection as MODULE:CLASS.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    database_url: DatabaseUrl = None,
    schema: Schema = "eventsource",
) -> None:
    """Rebuild a read model from offset 0 (live workers step aside meanwhile)."""
    import projections  # noqa: PLC0415

    with _cli_errors():
        projection = _load_projection(target)
        if not yes:
            if not sys.stdin.isatty():
                _fail("replay empties the read model first: pass --yes to confirm", 2)
            typer.confirm(
                f"Replay {projection.name!r}: its read model is reset and rebuilt. Continue?",
                abort=True,
            )
        settings = _settings(database_url, schema)
        with _open_store(settings) as store:
            _freeze_startup_objects()
            applied = projections.replay(store, projection, console=err_console)
        console.print(f"replayed {projection.name}: {applied} events applied", highlight=False)


@projections_app.command("status")
def projections_status(
    database_url: DatabaseUrl = None, schema: Schema = "eventsource", as_json: AsJson = False
) -> None:
    """Per projection and partition: position, head, lag, owner, last update, error."""
    import projections  # noqa: PLC0415

    with _cli_errors():
        settings = _settings(database_url, schema)
        with _open_store(settings) as store:
            rows = projections.status(store)
        if as_json:
            console.print_json(json.dumps([r.as_json() for r in rows]))
            return
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
        console.print(table)


def _partition_command(action: str) -> Any:
    def command(
        name: Annotated[str, typer.Argument(help="The projection's name.")],
        partition: Annotated[int, typer.Option("--partition", "-p", min=0, max=INT_MAX)],
        database_url: DatabaseUrl = None,
        schema: Schema = "eventsource",
    ) -> None:
        import projections  # noqa: PLC0415

        with _cli_errors():
            check_name(name, "NAME (the projection's name)")
            settings = _settings(database_url, schema)
            with _open_store(settings) as store:
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


worker_app = typer.Typer(help="Run command workers.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")
commands_app = typer.Typer(
    help="Inspect and operate the command queue: list, dead letters, retry, purge.",
    no_args_is_help=True,
)
app.add_typer(commands_app, name="commands")


def _freeze_startup_objects() -> None:
    """Move what start-up loaded (modules, classes, settings) out of the collector's reach.

    A worker allocates many short-lived objects per batch; every full collection would
    otherwise rescan the hundred thousand long-lived objects of its imports as well.
    """
    gc.collect()
    gc.freeze()


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
def worker_run(  # noqa: PLR0917 - typer maps parameters to options
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
    worker_id: Annotated[
        str | None, typer.Option("--worker-id", help="This worker's id (default host:pid).")
    ] = None,
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
    database_url: DatabaseUrl = None,
    schema: Schema = "eventsource",
) -> None:
    """Run command handlers until SIGTERM/SIGINT; workers compete for commands."""
    from ._command_worker import CommandWorker  # noqa: PLC0415

    with _cli_errors():
        # Checked here too, so that errors name the options (the worker checks its arguments).
        for name in queue or ():
            check_name(name, "--queue")
        if worker_id is not None:
            check_name(worker_id, "--worker-id")
        if lease is not None:
            check_seconds(lease, "--lease", low=MIN_LEASE, high=MAX_LEASE)
        check_seconds(grace, "--grace", high=MAX_SECONDS)
        check_seconds(poll_interval, "--poll-interval", low=MIN_POLL_INTERVAL, high=MAX_SECONDS)
        for module_name in modules:
            _import_handlers(module_name)
        settings = _settings(database_url, schema)
        with _open_store(settings) as store:
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
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: worker.stop())
            _freeze_startup_objects()
            worker.run()


def _command_table(title: str, rows: Sequence[Any], *, dead: bool) -> Table:
    table = Table(title=title)
    columns = ["id", "queue", "type", "status", "attempts", "run at", "worker", "error"]
    if dead:
        columns = ["id", "queue", "type", "attempts", "died", "error"]
    for column in columns:
        table.add_column(column)
    for c in rows:
        error = (c.last_error or "").strip().splitlines()
        last = error[-1] if error else ""
        if dead:
            table.add_row(
                str(c.id),
                c.queue,
                c.command_type,
                f"{c.attempts}/{c.max_attempts}",
                c.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
                last,
            )
        else:
            table.add_row(
                str(c.id),
                c.queue,
                c.command_type,
                c.status,
                f"{c.attempts}/{c.max_attempts}",
                c.run_at.strftime("%H:%M:%S"),
                c.worker or "",
                last,
            )
    return table


QueueFilter = Annotated[str | None, typer.Option("--queue", "-q", help="Only this queue.")]
Limit = Annotated[
    int, typer.Option("--limit", min=1, max=BIGINT_MAX, help="At most this many rows.")
]


def _listing(dead: bool, help_text: str) -> Any:
    def command(
        queue: QueueFilter = None,
        limit: Limit = 100,
        database_url: DatabaseUrl = None,
        schema: Schema = "eventsource",
        as_json: AsJson = False,
    ) -> None:
        from ._commands import CommandQueue  # noqa: PLC0415

        with _cli_errors():
            if queue is not None:
                check_name(queue, "--queue")
            settings = _settings(database_url, schema)
            with _open_store(settings) as store:
                commands = CommandQueue(store)
                rows = (commands.dead if dead else commands.list)(queue=queue, limit=limit)
            if as_json:
                console.print_json(json.dumps([r.as_json() for r in rows]))
            else:
                title = "dead commands" if dead else "commands"
                console.print(_command_table(title, rows, dead=dead))

    command.__doc__ = help_text
    return command


commands_app.command("list")(
    _listing(False, "Pending and running commands with attempts, run-at, worker and last error.")
)
commands_app.command("dead")(
    _listing(
        True, "Dead commands (no attempts left) with their last error; --json adds tracebacks."
    )
)


@commands_app.command("retry")
def commands_retry(
    command_id: Annotated[
        int, typer.Argument(min=1, max=BIGINT_MAX, help="The dead command's id.")
    ],
    attempts: Annotated[
        int, typer.Option("--attempts", min=1, max=100, help="Attempts to give it.")
    ] = 1,
    database_url: DatabaseUrl = None,
    schema: Schema = "eventsource",
    as_json: AsJson = False,
) -> None:
    """Run a dead command again (after fixing its handler)."""
    from ._commands import CommandQueue  # noqa: PLC0415

    with _cli_errors():
        settings = _settings(database_url, schema)
        with _open_store(settings) as store:
            CommandQueue(store).retry(command_id, attempts=attempts)
        if as_json:
            console.print_json(json.dumps({"retried": command_id, "attempts": attempts}))
        else:
            console.print(f"command {command_id}: pending again with {attempts} more attempt(s)")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in ``30``, ``30s``, ``15m``, ``12h``, ``7d`` or ``2w``, at most 100 years.

    ``ValueError`` naming ``what`` otherwise.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"{what}: invalid duration {text!r}: use a number with s, m, h, d or w (e.g. 7d)"
        )
    value = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if value > MAX_DELAY:
        raise ValueError(
            f"{what}: {text!r} is too long: at most 100 years ({MAX_DELAY:.0f} seconds)"
        )
    return value


@commands_app.command("purge")
def commands_purge(  # noqa: PLR0917 - typer maps parameters to options
    older_than: Annotated[
        str, typer.Option("--older-than", help="Only dead commands older than this (e.g. 7d).")
    ] = "0s",
    queue: QueueFilter = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    database_url: DatabaseUrl = None,
    schema: Schema = "eventsource",
    as_json: AsJson = False,
) -> None:
    """Delete dead commands (done ones are deleted by their ack already)."""
    from ._commands import CommandQueue  # noqa: PLC0415

    with _cli_errors():
        age = parse_duration(older_than, "--older-than")
        if queue is not None:
            check_name(queue, "--queue")
        if not yes:
            if not sys.stdin.isatty():
                _fail("purge deletes dead commands for good: pass --yes to confirm", 2)
            typer.confirm(f"Delete dead commands older than {older_than}?", abort=True)
        settings = _settings(database_url, schema)
        with _open_store(settings) as store:
            purged = CommandQueue(store).purge(older_than=age, queue=queue)
        if as_json:
            console.print_json(json.dumps({"purged": purged}))
        else:
            console.print(f"purged {purged} dead command(s)")


@app.command("demo")
def demo(database_url: DatabaseUrl = None, schema: Schema = "eventsource") -> None:
    """Run the bank example end to end and print what it did."""
    with _cli_errors():
        from examples.bank.demo import run_demo  # noqa: PLC0415 - only the demo needs it

        settings = _settings(database_url, schema)
        with _open_store(settings) as store:
            store.upgrade()
            run_demo(store, console)


def _usage_error(exc: Any, args: Sequence[str]) -> NoReturn:
    """Report a usage error of click (an unknown option, a value out of range) on one line,
    naming the environment variable when the bad value came from there."""
    bad_parameter = isinstance(exc, _click_exceptions.BadParameter)
    if bad_parameter and exc.param is not None and exc.param_hint is None:
        envvar = exc.param.envvar
        if isinstance(envvar, str) and envvar in os.environ:
            opts = getattr(exc.param, "opts", [])
            given = any(arg == o or arg.startswith(f"{o}=") for arg in args for o in opts)
            if not given:
                exc.param_hint = f"{envvar} ({' / '.join(opts)})"
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, _click_exceptions.UsageError) and ctx is not None:
        message = f"{message.rstrip('.')}; see `{ctx.command_path} --help`"
    _print_error(message)
    sys.exit(exc.exit_code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `eventsource` console script.

    Usage errors are one line (``error: …``, exit 2) like every other error of the CLI.
    """
    command = typer.main.get_command(app)
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        code = command.main(args=args, prog_name="eventsource", standalone_mode=False)
    except _click_exceptions.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # no command given: show the help
            exc.show()
            sys.exit(exc.exit_code)
        _usage_error(exc, args)
    except typer.Abort:  # a confirmation answered no, or end of input
        _print_error("aborted")
        sys.exit(1)
    except SystemExit as exc:
        sys.exit(exc.code)
    sys.exit(code if isinstance(code, int) else 0)
