"""The options the command groups share, and the bounds of the workers' options.

Every command takes ``--database-url`` and ``--schema`` through ``with_settings``; a set of
options that several commands share is declared once with ``option_set``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from eventsource._checks import check_name
from eventsource.cli._app import cli_errors, settings_for

__all__ = [
    "MAX_LEASE",
    "MAX_SECONDS",
    "MIN_LEASE",
    "MIN_POLL_INTERVAL",
    "AsJson",
    "Command",
    "DatabaseUrl",
    "Schema",
    "WorkerId",
    "Yes",
    "check_worker_id",
    "keyword_option",
    "option_set",
    "with_settings",
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
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
WorkerId = Annotated[
    str | None, typer.Option("--worker-id", help="This worker's id (default host:pid).")
]


def check_worker_id(worker_id: str | None) -> None:
    """A given ``--worker-id`` is a valid name (ValueError naming the option otherwise)."""
    if worker_id is not None:
        check_name(worker_id, "--worker-id")


Command = Callable[..., None]


def keyword_option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """The parameter of a shared option, for ``option_set``: ``annotation`` is the option's
    ``Annotated[type, typer.Option(...)]``, ``default`` its default."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )


def option_set(
    receiver: str,
    options: Sequence[inspect.Parameter],
    make: Callable[..., Any],
    *,
    before: str | None = None,
    reads: Sequence[str] = (),
) -> Callable[[Command], Command]:
    """A decorator giving a command the shared ``options``, and its parameter ``receiver``
    what they make.

    typer reads a command's options from its signature (``inspect.signature``, which honours
    ``__signature__``): the decorated command's has ``options`` before its parameter ``before``
    (after its last one without it), and no ``receiver``. When it runs, the command is called
    with ``receiver=make(**the options' values, **its parameters named in reads)``; errors of
    ``make`` and of the command are reported on one line, as ``cli_errors`` does.
    """
    names = [option.name for option in options]

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        for name in (receiver, before, *reads):
            if name is not None and name not in signature.parameters:
                raise TypeError(f"{command.__qualname__} has no parameter {name!r}")
        parameters = [p for p in signature.parameters.values() if p.name != receiver]
        at = [p.name for p in parameters].index(before) if before else len(parameters)
        parameters[at:at] = options
        # Keyword-only, as typer calls a command: the options' defaults may stand before
        # parameters without one.
        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters]

        @functools.wraps(command)
        def run(**values: Any) -> None:
            with cli_errors():
                given = {name: values.pop(name) for name in names}
                made = make(**given, **{name: values[name] for name in reads})
                command(**values, **{receiver: made})

        # typer also calls get_type_hints(), which reads __annotations__: the evaluated ones.
        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        annotations = {p.name: p.annotation for p in parameters if p.annotation is not p.empty}
        run.__annotations__ = annotations | {"return": None}
        return run

    return decorate


def with_settings(
    *, before: str | None = None, reads: Sequence[str] = ()
) -> Callable[[Command], Command]:
    """A decorator giving a command ``--database-url`` and ``--schema`` (before its option
    ``before``, else after its last) and its parameter ``settings`` the ``Settings`` they make
    over the ``EVENTSOURCE_*`` environment (see ``settings_for``), with its own options named
    in ``reads`` (such as ``partitions``). Bad values exit 2 naming the option or variable.

    >>> @with_settings(before="as_json")
    ... def status(settings: Settings, as_json: AsJson = False) -> None: ...
    """
    return option_set(
        "settings",
        [
            keyword_option("database_url", DatabaseUrl, None),
            keyword_option("schema", Schema, "eventsource"),
        ],
        settings_for,
        before=before,
        reads=reads,
    )
