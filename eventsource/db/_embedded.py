"""The embedded PostgreSQL server (the ``pgserver`` package), used when no URL is configured.

The server runs from a local data directory and is shared by every process that asks for the
same directory; it stops when the last of them exits.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from eventsource._errors import EmbeddedUnavailable

__all__ = ["embedded_url"]

_servers: dict[Path, Any] = {}
_lock = threading.Lock()


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded server in ``data_dir`` and return its SQLAlchemy URL."""
    data_dir = Path(data_dir).expanduser().resolve()
    with _lock:
        server = _servers.get(data_dir)
        if server is None:
            try:
                import pgserver  # noqa: PLC0415 - optional dependency, imported on demand
            except ImportError:
                raise EmbeddedUnavailable(
                    "no database URL is set and the embedded PostgreSQL is not installed:"
                    " set EVENTSOURCE_DATABASE_URL, or pip install 'eventsource[embedded]'"
                ) from None
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                server = pgserver.get_server(  # type: ignore[attr-defined]
                    data_dir, cleanup_mode="stop"
                )
            except Exception as exc:
                raise EmbeddedUnavailable(
                    f"the embedded PostgreSQL in {data_dir} did not start: {exc}"
                ) from exc
            _servers[data_dir] = server
    return _url(server.get_postmaster_info())


def _url(info: Any) -> str:
    """The URL of a running embedded server, from its postmaster's record (``PostmasterInfo``).

    pgserver listens on a Unix socket inside the data directory, or in a directory of its
    own when that path would be too long for a socket (over ~107 bytes), or on a TCP port
    where there are no Unix sockets.
    """
    if info.socket_dir is not None:
        return f"postgresql+psycopg://postgres@/postgres?host={info.socket_dir}&port={info.port}"
    return f"postgresql+psycopg://postgres@{info.hostname}:{info.port}/postgres"
