"""The `eventsource` command line (typer): schema management and the demo.

Every command takes ``--database-url`` (default: ``EVENTSOURCE_DATABASE_URL``, else the
embedded server) and ``--schema``. Exit codes: 0 success, 1 failure, 2 bad usage; errors are
one line that says what to do.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from ._config import Settings
from ._core import safe_url
from ._errors import EventSourceError
from ._logging import configure_logging, get_logger
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


def _fail(message: str, code: int) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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


@app.command("demo")
def demo(database_url: DatabaseUrl = None, schema: Schema = "eventsource") -> None:
    """Run the bank example end to end and print what it did."""
    with _cli_errors():
        from examples.bank.demo import run_demo  # noqa: PLC0415 - only the demo needs it

        settings = _settings(database_url, schema)
        with _open_store(settings) as store:
            store.upgrade()
            run_demo(store, console)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `eventsource` console script."""
    command = typer.main.get_command(app)
    try:
        command.main(args=list(argv) if argv is not None else None, prog_name="eventsource")
    except SystemExit as exc:
        sys.exit(exc.code)
