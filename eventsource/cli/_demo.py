"""`eventsource demo`: the bank example, end to end."""

from __future__ import annotations

from eventsource.cli._app import command_store, console
from eventsource.cli._options import DatabaseUrl, Schema


def demo(database_url: DatabaseUrl = None, schema: Schema = "eventsource") -> None:
    """Run the bank example end to end and print what it did."""
    from examples.bank.demo import run_demo  # noqa: PLC0415 - only the demo needs it

    with command_store(database_url, schema) as store:
        store.upgrade()
        run_demo(store, console)
