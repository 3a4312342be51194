"""`eventsource commands`: list, dead letters, retry and purge."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.table import Table

from eventsource._checks import BIGINT_MAX, check_name
from eventsource._config import Settings
from eventsource.cli._app import confirm, open_store, report_problems, show
from eventsource.cli._options import AsJson, Yes, with_settings
from eventsource.commands import MAX_DELAY

commands_app = typer.Typer(
    help="Inspect and operate the command queue: list, dead letters, retry, purge.",
    no_args_is_help=True,
)


def _command_table(title: str, rows: Sequence[Any], *, dead: bool) -> Table:
    """The rich table of commands (or of dead letters, with when they died and their error)."""
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


def _list_commands(
    dead: bool,
    *,
    queue: str | None,
    limit: int,
    settings: Settings,
    as_json: bool,
    max_age: str | None = None,
    check: bool = False,
) -> None:
    """Show commands (or dead letters); with ``check``, exit 1 on the problems found."""
    from eventsource.commands import CommandQueue  # noqa: PLC0415
    from eventsource.ops import command_problems  # noqa: PLC0415

    if queue is not None:
        check_name(queue, "--queue")
    if max_age is not None and not check:
        raise ValueError("--max-age goes with --check")
    age = None if max_age is None else parse_duration(max_age, "--max-age")
    with open_store(settings) as store:
        commands = CommandQueue(store)
        rows = (commands.dead if dead else commands.list)(queue=queue, limit=limit)
        title = "dead commands" if dead else "commands"
        show(as_json, [r.as_json() for r in rows], _command_table(title, rows, dead=dead))
        if check:
            report_problems(command_problems(store, age))


@commands_app.command("list")
@with_settings(before="as_json")
def commands_list(  # noqa: PLR0917 - typer maps parameters to options
    settings: Settings,
    queue: QueueFilter = None,
    limit: Limit = 100,
    as_json: AsJson = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 1 (saying why) if dead letters exist or a due command waits too long.",
        ),
    ] = False,
    max_age: Annotated[
        str | None,
        typer.Option(
            "--max-age",
            help="With --check: how long a due command may wait, in seconds (or 30s, 5m, 1h).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Pending and running commands with attempts, run-at, worker and last error."""
    _list_commands(
        False,
        queue=queue,
        limit=limit,
        settings=settings,
        as_json=as_json,
        max_age=max_age,
        check=check,
    )


@commands_app.command("dead")
@with_settings(before="as_json")
def commands_dead(
    settings: Settings, queue: QueueFilter = None, limit: Limit = 100, as_json: AsJson = False
) -> None:
    """Dead commands (no attempts left) with their last error; --json adds tracebacks."""
    _list_commands(True, queue=queue, limit=limit, settings=settings, as_json=as_json)


@commands_app.command("retry")
@with_settings(before="as_json")
def commands_retry(
    settings: Settings,
    command_id: Annotated[
        int, typer.Argument(min=1, max=BIGINT_MAX, help="The dead command's id.")
    ],
    attempts: Annotated[
        int, typer.Option("--attempts", min=1, max=100, help="Attempts to give it.")
    ] = 1,
    as_json: AsJson = False,
) -> None:
    """Run a dead command again (after fixing its handler)."""
    from eventsource.commands import CommandQueue  # noqa: PLC0415

    with open_store(settings) as store:
        CommandQueue(store).retry(command_id, attempts=attempts)
        show(
            as_json,
            {"retried": command_id, "attempts": attempts},
            f"command {command_id}: pending again with {attempts} more attempt(s)",
        )


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
@with_settings(before="as_json")
def commands_purge(
    settings: Settings,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Only dead commands older than this (e.g. 7d).")
    ] = "0s",
    queue: QueueFilter = None,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Delete dead commands (done ones are deleted by their ack already)."""
    from eventsource.commands import CommandQueue  # noqa: PLC0415

    age = parse_duration(older_than, "--older-than")
    if queue is not None:
        check_name(queue, "--queue")
    confirm(
        yes,
        f"Delete dead commands older than {older_than}?",
        "purge deletes dead commands for good: pass --yes to confirm",
    )
    with open_store(settings) as store:
        purged = CommandQueue(store).purge(older_than=age, queue=queue)
    show(as_json, {"purged": purged}, f"purged {purged} dead command(s)")
