"""`eventsource db`: create, upgrade and inspect the schema."""

from __future__ import annotations

from typing import Annotated

import typer

from eventsource._config import Settings
from eventsource.cli._app import _origin, console, err_console, fail, open_store, show
from eventsource.cli._options import AsJson, with_settings
from eventsource.db import safe_url

db_app = typer.Typer(
    help="Create, upgrade and inspect the eventsource schema.", no_args_is_help=True
)


@db_app.command("upgrade")
@with_settings(before="partitions", reads=("partitions",))
def db_upgrade(
    settings: Settings,
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            envvar="EVENTSOURCE_PARTITIONS",
            help="Partition count when the schema is first created (default 16); fixed after.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create the schema or upgrade it to this version (idempotent; safe to run concurrently)."""
    with open_store(settings) as store:
        existing = store.status().partitions
        if partitions is not None and existing is not None and partitions != existing:
            given = _origin("partitions", "--partitions")
            given += f"={partitions}" if given.startswith("EVENTSOURCE_") else f" {partitions}"
            fail(
                f"schema {store.schema} has {existing} partitions, fixed when it was created:"
                f" {given} cannot change it"
                " (leave it out to upgrade the schema as it is)",
                2,
            )
        store.upgrade()
        status = store.status()
        console.print(
            f"schema [bold]{status.schema}[/] at revision {status.revision}"
            f" with {status.partitions} partitions on {safe_url(store.url)}",
            highlight=False,
            soft_wrap=True,
        )


@db_app.command("status")
@with_settings(before="as_json")
def db_status(settings: Settings, as_json: AsJson = False) -> None:
    """Show the schema's revision, the code's head revision and the partition count."""
    with open_store(settings) as store:
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
        show(as_json, info, "\n".join(f"{key:>11}: {value}" for key, value in info.items()))
        if not status.up_to_date:
            err_console.print("the schema is not up to date: run `eventsource db upgrade`")
            raise typer.Exit(1)
