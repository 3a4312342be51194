"""The `eventsource` application: settings, the store, output, errors on one line."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console, RenderableType
from rich.markup import escape

from eventsource._checks import check_database_url
from eventsource._config import Settings
from eventsource._errors import EventSourceError
from eventsource._logging import configure_logging, get_logger
from eventsource._version import package_version
from eventsource.db import quote_schema, safe_url
from eventsource.store import EventStore

__all__ = ["app", "main"]

app = typer.Typer(
    name="eventsource",
    help="Event sourcing on PostgreSQL: event store, projections and command queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console()
err_console = Console(stderr=True)
log = get_logger("eventsource.cli")


def _print_version(value: bool) -> None:
    """Print ``eventsource <version>`` and exit, for ``--version``."""
    if value:
        console.print(f"eventsource {package_version()}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Event sourcing on PostgreSQL: event store, projections and command queue."""


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


def _one_line(message: str) -> str:
    """A message on one line (a multi-line one is joined with "; ")."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return "; ".join(lines) if lines else message


def _print_error(message: str) -> None:
    """``error: message`` on stderr, on one line (markup in the message is not interpreted)."""
    err_console.print(
        f"[bold red]error:[/] {escape(_one_line(message))}", highlight=False, soft_wrap=True
    )


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as the one-line error and exit with ``code``."""
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


def _named_by_origin(message: str, options: dict[str, Any]) -> str:
    """A ``Settings`` error about one of ``options`` (named as a keyword there), naming the
    option or the environment variable it was read from instead."""
    for name in options:
        if message.startswith(f"{name}: "):
            origin = _origin(name, f"--{name.replace('_', '-')}")
            return f"{origin}: {message.removeprefix(f'{name}: ')}"
    return message


@contextmanager
def cli_errors() -> Iterator[None]:
    """One line per failure: 2 for bad input, 1 for everything that went wrong at run time."""
    try:
        yield
    except typer.Exit:
        raise
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        fail(f"invalid setting {where}: {first.get('msg')}", 2)
    except (ValueError, TypeError) as exc:
        fail(str(exc), 2)
    except EventSourceError as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)


def settings_for(database_url: str | None, schema: str, **extra: Any) -> Settings:
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
    try:
        settings = Settings(**{k: v for k, v in values.items() if v is not None})
    except ValueError as exc:
        raise ValueError(_named_by_origin(str(exc), extra)) from None
    configure_logging(settings.log_format, settings.log_level)
    return settings


def serve_worker_metrics(settings: Settings) -> None:
    """Serve a worker process's metrics for Prometheus if ``EVENTSOURCE_METRICS_PORT`` is set."""
    if settings.metrics_port is None:
        return
    from eventsource.telemetry import serve_metrics  # noqa: PLC0415

    serve_metrics(settings.metrics_port, settings.metrics_host)
    log.info("metrics served", host=settings.metrics_host, port=settings.metrics_port)


def open_store(settings: Settings) -> EventStore:
    """The store of a command, from its settings (see ``settings_for``). Use it as a context
    manager."""
    store = EventStore.from_env(settings)
    log.debug("store opened", url=safe_url(store.url), schema=store.schema)
    return store


def show(as_json: bool, data: Any, text: RenderableType) -> None:
    """Print ``data`` as JSON with ``--json``, else ``text`` (lines or a table)."""
    if as_json:
        console.print_json(json.dumps(data))
    else:
        console.print(text, highlight=False)


def report_problems(problems: list[str]) -> None:
    """The end of a ``--check``: each problem on stderr and exit 1, else nothing."""
    for problem in problems:
        err_console.print(f"[bold red]unhealthy:[/] {escape(problem)}", highlight=False)
    if problems:
        raise typer.Exit(1)


def confirm(yes: bool, question: str, refusal: str) -> None:
    """Ask ``question`` unless ``--yes`` was given (no aborts); without a terminal to ask on,
    fail with ``refusal`` (exit 2)."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(refusal, 2)
    typer.confirm(question, abort=True)


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
