"""`eventsource demo`: the bank example, end to end."""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from types import ModuleType

from eventsource.cli._app import command_store, console
from eventsource.cli._options import DatabaseUrl, Schema


def demo(database_url: DatabaseUrl = None, schema: Schema = "eventsource") -> None:
    """Run the bank example end to end and print what it did."""
    with command_store(database_url, schema) as store:
        store.upgrade()
        _bank_demo().run_demo(store, console)


def _bank_demo() -> ModuleType:
    # A wheel installs the repository's examples/ as eventsource._examples; a source checkout
    # has them beside the package, as the top-level `examples` that its README runs.
    package = "eventsource._examples" if find_spec("eventsource._examples") else "examples"
    return import_module(f"{package}.bank.demo")
