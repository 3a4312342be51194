"""Checks of the values users pass in: names, integers, durations, times, URLs.

Every public constructor, method, CLI option and ``EVENTSOURCE_*`` setting validates its
arguments here before any I/O, so a bad value fails with a ``TypeError`` or ``ValueError`` that
names the argument and shows the value, and nothing is written::

    worker_id = check_name(worker_id, "worker_id")
    limit = check_int(limit, "limit", low=1)
    poll_interval = check_seconds(poll_interval, "poll_interval", low=0.01)

The limits are those of what stores or reads the value: PostgreSQL's ``integer`` and ``bigint``
ranges, and text without NUL that encodes as UTF-8. JSON documents are checked in ``_json``.

Numbers, durations and times are validated by pydantic (strict types, so a ``bool`` is not an
``int``; one cached ``TypeAdapter`` per kind and bounds), and ``invalid`` words what it refuses
as the one-line error. Names and URLs are checked by hand: their rules (NUL, lone surrogates,
identifiers) are PostgreSQL's, not types pydantic knows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Annotated, Generic, TypeVar

from pydantic import (
    AwareDatetime,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

__all__ = [
    "BIGINT_MAX",
    "BIGINT_MIN",
    "INT_MAX",
    "INT_MIN",
    "MAX_NAME_LENGTH",
    "MAX_STREAM_ID_LENGTH",
    "check_aware_datetime",
    "check_database_url",
    "check_int",
    "check_name",
    "check_schema_name",
    "check_seconds",
    "check_utf8",
    "surrogate_at",
]

INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # PostgreSQL integer
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1  # PostgreSQL bigint
MAX_NAME_LENGTH = 200
T = TypeVar("T")


def _show(value: str, limit: int = 40) -> str:
    """``repr`` of a value, cut after ``limit`` characters (long values in messages)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}…"


def surrogate_at(value: str) -> int | None:
    """The index of the first lone surrogate in ``value`` (``None`` if none): a Python str may
    hold one (``"\\udcff"``, e.g. from bytes of ``sys.argv``), UTF-8 and PostgreSQL text cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_utf8(value: str, what: str) -> str:
    """``value`` if it encodes as UTF-8; ``ValueError`` naming ``what`` for a lone surrogate."""
    at = surrogate_at(value)
    if at is not None:
        raise ValueError(
            f"{what} is not valid UTF-8 text: it contains the lone surrogate"
            f" {value[at]!r} at index {at}: {_show(value)}"
        )
    return value


def check_name(
    value: object, what: str, *, max_length: int = MAX_NAME_LENGTH, blank: bool = False
) -> str:
    """A name or key stored as text: a ``str`` of 1 to ``max_length`` characters.

    ``TypeError`` if it is not a ``str``; ``ValueError`` if it is empty (or only whitespace,
    unless ``blank``), longer than ``max_length``, contains NUL, or is not valid UTF-8 (a lone
    surrogate). Messages name ``what`` and show the value::

        check_name("w\\x00", "worker_id")  # ValueError: worker_id must not contain a NUL ...
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}: {value!r}")
    if not value or (not blank and not value.strip()):
        raise ValueError(f"{what} must not be empty, got {value!r}")
    if len(value) > max_length:
        raise ValueError(
            f"{what} is {len(value)} characters long, longer than {max_length}: {_show(value)}"
        )
    if "\x00" in value:
        raise ValueError(f"{what} must not contain a NUL character: {_show(value)}")
    return check_utf8(value, what)


# -- numbers, durations and times: pydantic validates, ``invalid`` words the error ----------

# pydantic's errors for a value of no accepted type (the others refuse a value of one).
_TYPE_ERRORS = frozenset(
    {"int_type", "float_type", "bool_type", "time_delta_type", "datetime_type"}
)


def invalid(
    exc: ValidationError, value: object, what: str, expected: str, bounds: str
) -> TypeError | ValueError:
    """The one-line error for ``value`` of the argument ``what``, which pydantic refused:
    a ``TypeError`` (``what must be <expected>``) when it is of no accepted type, else a
    ``ValueError`` (``what must not be negative`` below a bound of 0, or ``must be <bounds>``).
    """
    errors = exc.errors(include_url=False)
    if all(error["type"] in _TYPE_ERRORS for error in errors):
        return TypeError(f"{what} must be {expected}, got {type(value).__name__}: {value!r}")
    if any(error["type"] == "greater_than_equal" and not error["ctx"]["ge"] for error in errors):
        return ValueError(f"{what} must not be negative, got {value!r}")
    return ValueError(f"{what} must be {bounds}, got {value!r}")


@dataclass(frozen=True, slots=True)
class _Rule(Generic[T]):
    """A pydantic validator of one kind of argument (built once) and how its errors read."""

    adapter: TypeAdapter[T]
    expected: str  # the accepted types, for a TypeError: "an int"
    bounds: str  # the accepted values, for a ValueError: "from 1 to 1000"

    def check(self, value: object, what: str) -> T:
        """The validated value; the error of ``invalid`` naming ``what`` if it is refused."""
        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            raise invalid(exc, value, what, self.expected, self.bounds) from None


@cache
def _int_rule(low: int, high: int) -> _Rule[int]:
    """The rule of ``check_int`` for these bounds (one adapter per pair of bounds)."""
    adapter: TypeAdapter[int] = TypeAdapter(Annotated[int, Strict(), Field(ge=low, le=high)])
    return _Rule(adapter, "an int", f"from {low} to {high}")


def check_int(value: object, what: str, *, low: int = BIGINT_MIN, high: int = BIGINT_MAX) -> int:
    """An ``int`` (not a ``bool``) from ``low`` to ``high`` inclusive (default: a bigint).

    ``TypeError`` for another type, ``ValueError`` out of range; both name ``what``::

        check_int(2**63, "limit", low=1)  # ValueError: limit must be from 1 to 9223372036854775807
    """
    if type(value) is int and low <= value <= high:
        return value  # the common case on hot paths (appends, reads), without pydantic
    return _int_rule(low, high).check(value, what)


@cache
def _bool_rule() -> _Rule[bool]:
    """The rule of ``check_bool``: a ``bool`` and nothing else (not 0 or 1, not "yes")."""
    return _Rule(TypeAdapter(Annotated[bool, Strict()]), "a bool", "a bool")


def check_bool(value: object, what: str) -> bool:
    """A ``bool`` (``TypeError`` naming ``what`` otherwise: no 0/1, no "yes")."""
    if type(value) is bool:
        return value
    return _bool_rule().check(value, what)


@cache
def _seconds_rule(low: float, high: float, or_timedelta: bool) -> _Rule[float]:
    """The rule of ``check_seconds`` for these bounds: a finite float, or an int (so that one
    too large for a float is out of range, not of another type)."""
    number = Annotated[float, Strict(), Field(ge=low, le=high, allow_inf_nan=False)]
    whole = Annotated[int, Strict(), Field(ge=math.ceil(low), le=math.floor(high))]
    adapter: TypeAdapter[float] = TypeAdapter(number | whole)
    expected = "a number of seconds or a timedelta" if or_timedelta else "a number of seconds"
    return _Rule(adapter, expected, f"from {low:g} to {high:g} seconds")


def check_seconds(
    value: object, what: str, *, low: float = 0.0, high: float = 86400.0, or_timedelta: bool = False
) -> float:
    """A duration in seconds (a ``float``): an int or float (not a bool), or with
    ``or_timedelta`` a ``timedelta``, finite, from ``low`` to ``high``.

    The default upper bound of a day keeps every wait well within what ``threading`` and
    PostgreSQL intervals accept. ``TypeError`` for another type, ``ValueError`` for NaN,
    infinity or a value out of range; both name ``what``::

        check_seconds(1e10, "poll_interval", low=0.01)  # ValueError: poll_interval must be ...
    """
    if or_timedelta and isinstance(value, timedelta):
        value = value.total_seconds()
    return float(_seconds_rule(low, high, or_timedelta).check(value, what))


_AWARE: _Rule[datetime] = _Rule(
    TypeAdapter(Annotated[AwareDatetime, Strict()]), "a datetime", "timezone-aware"
)


def check_aware_datetime(value: object, what: str) -> datetime:
    """A timezone-aware ``datetime``: ``TypeError`` for another type, ``ValueError`` for a
    naive one; both name ``what``."""
    return _AWARE.check(value, what)


_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
_BAD_PORT = re.compile(r"invalid literal for int\(\) with base 10: (.*)$")


def check_database_url(value: object, what: str = "database URL") -> str:
    """A PostgreSQL URL (``postgresql://user:password@host:port/database``), as given.

    ``TypeError`` if it is not a ``str``; ``ValueError`` naming ``what`` for a URL that does not
    parse, another database's scheme, or a port that is not a number from 1 to 65535 (in the
    host part or a ``port=`` parameter). Messages never show the password.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    at = surrogate_at(value)
    if at is not None:  # not shown: the URL may hold a password
        raise ValueError(
            f"{what} is not valid UTF-8 text: it contains a lone surrogate at index {at}"
        )
    try:
        url = make_url(value)
    except sa_exc.ArgumentError:
        raise ValueError(
            f"invalid {what}: expected postgresql://user:password@host:port/database"
        ) from None
    except ValueError as exc:  # SQLAlchemy's int() of the port
        match = _BAD_PORT.search(str(exc))
        got = match.group(1) if match else "an invalid port"
        raise ValueError(
            f"the port of the {what} must be a number from 1 to 65535, got {got}"
        ) from None
    backend = url.drivername.split("+", 1)[0]
    if backend not in _POSTGRES_SCHEMES:
        raise ValueError(
            f"unsupported {what} scheme {url.drivername!r}: eventsource needs PostgreSQL"
            " (postgresql://user:password@host:port/database)"
        )
    ports: list[str] = [] if url.port is None else [str(url.port)]
    query_port = url.query.get("port")
    for part in (query_port,) if isinstance(query_port, str) else query_port or ():
        ports.extend(part.split(","))
    for port in ports:
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(
                f"the port of the {what} must be a number from 1 to 65535, got {port!r}"
            )
    return value


# Stream ids are at most this many characters (a CHECK on the events table says the same).
MAX_STREAM_ID_LENGTH = 500

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def check_schema_name(schema: object) -> str:
    """``schema`` if it is a valid schema name; ``ValueError`` naming it otherwise."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"invalid schema name {schema!r}: use letters, digits and underscores"
            " (at most 63, not starting with a digit)"
        )
    return schema
