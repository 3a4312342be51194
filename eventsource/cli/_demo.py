"""`eventsource demo`: the bank example, end to end."""

from __future__ import annotations

from eventsource.cli._app import (
    DatabaseUrl,
    Schema,
    _cli_errors,
    _open_store,
    _settings,
    console,
)


def demo(database_url: DatabaseUrl = None, schema: Schema = "eventsource") -> None:
    """Run the bank example end to end and print what it did."""
    with _cli_errors():
        from examples.bank.demo import run_demo  # noqa: PLC0415 - only the demo needs it

        settings = _settings(database_url, schema)
        with _open_store(settings) as store:
            store.upgrade()
            run_demo(store, console)
