"""Connection strings for psycopg, built from SQLAlchemy URLs."""

from __future__ import annotations

from typing import Any

import psycopg.conninfo
import psycopg.errors
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url


def safe_url(url: str | URL) -> str:
    """The URL with its password (in the user part or the query) masked, for messages and logs."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        return "<unparseable database URL>"
    if "password" in parsed.query:  # libpq also takes the password as a query parameter
        parsed = parsed.update_query_dict({"password": "MASKED"})
    return parsed.render_as_string(hide_password=True).replace("password=MASKED", "password=***")


# TCP keepalives unless the URL sets its own: a connection to a server that vanished (a
# network partition, a host that died) fails within about 25 s instead of the kernel's 2 h.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def conninfo(url: URL) -> str:
    """A libpq connection string (``key=value`` form) for a SQLAlchemy URL.

    Query parameters pass through as they were decoded from the URL (``options=-c%20x%3D1``
    becomes ``options='-c x=1'``); several ``host`` values are joined with commas, as libpq
    expects. TCP keepalives are on unless the URL says otherwise.
    """
    params: dict[str, Any] = dict(KEEPALIVES)
    for key, value in url.query.items():
        params[key] = ",".join(value) if isinstance(value, tuple) else value
    if url.host:
        params["host"] = url.host
    if url.port:
        params["port"] = url.port
    if url.username:
        params["user"] = url.username
    if url.password is not None:
        params["password"] = url.password
    if url.database:
        params["dbname"] = url.database
    return psycopg.conninfo.make_conninfo("", **params)
