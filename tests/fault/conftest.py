"""The fault suite's server: a second, disposable PostgreSQL for the whole session.

The tests restart it, stop it and cut its clients off, so they never use the main server of
``EVENTSOURCE_DATABASE_URL``. Without a way to create one (no server binaries), they skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._server import DisposableServer, NoServer


@pytest.fixture(scope="session")
def fault_server() -> Iterator[DisposableServer]:
    """A PostgreSQL server of the suite's own on a free port, removed afterwards."""
    try:
        server = DisposableServer.create()
    except NoServer as exc:
        pytest.skip(f"the fault suite needs a second PostgreSQL server: {exc}")
    try:
        yield server
    finally:
        server.destroy()
