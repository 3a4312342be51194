"""`eventsource demo`: the bank example, end to end."""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType

from eventsource._config import Settings
from eventsource._errors import EventSourceError
from eventsource.cli._app import console, open_store
from eventsource.cli._options import with_settings


@with_settings()
def demo(settings: Settings) -> None:
    """Run the bank example end to end and print what it did."""
    bank_demo = _bank_demo()  # before anything is written
    with open_store(settings) as store:
        store.upgrade()
        bank_demo.run_demo(store, console)


def _bank_demo() -> ModuleType:
    """The bank example's demo module, found from this package.

    A wheel installs the repository's examples/ as ``eventsource._examples``; a source checkout
    (or an editable install) has them beside the package, importable as ``examples``, and an
    application's own ``examples`` package is never taken for them.
    """
    if find_spec("eventsource._examples") is not None:
        return import_module("eventsource._examples.bank.demo")
    checkout = Path(__file__).resolve().parents[2] / "examples" / "__init__.py"
    spec = find_spec("examples")
    if spec is None or spec.origin is None or Path(spec.origin).resolve() != checkout:
        found = spec.origin if spec is not None else None
        raise EventSourceError(f"the bank example is not installed (`examples` is {found!r})")
    return import_module("examples.bank.demo")
