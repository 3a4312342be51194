"""Commands and handlers for the command-worker acceptance tests, imported by the worker
processes (`eventsource worker run tests.acceptance._command_support`) and by the tests.

Handlers leave two traces in tables of the test's schema (``EVENTSOURCE_SCHEMA``):

- ``runs``: one row per attempt, written on an autocommit connection of their own when the
  handler starts (so it survives a killed or fenced attempt) and stamped ``ended_at`` once the
  handler has done its work;
- ``effects``: one row per attempt written through ``ctx.tx``, so it commits only together with
  the command's ack — exactly once per command if the queue's fencing holds.

``fixed`` holds the numbers of poison commands that have been "fixed" by the operator, and
``gates`` those of gated commands whose first attempt may finish.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import psycopg
from sqlalchemy import TextClause, make_url, text

from eventsource import Command, CommandContext, EventStore, handler
from eventsource.db import conninfo, quote_schema


class Work(Command, name="acceptance.Work"):
    """Sleep ``sleep`` seconds (``first_sleep`` on the first attempt), then record the effect.

    A ``gated`` command's first attempt also waits for its number in the ``gates`` table (for
    at most a minute) before recording its effect: the test decides when it finishes.
    """

    n: int
    key: str | None = None
    sleep: float = 0.0
    first_sleep: float | None = None
    gated: bool = False


class Poison(Command, name="acceptance.Poison"):
    """Fails until its number is in the ``fixed`` table, then records the effect."""

    n: int


class Garbled(Command, name="acceptance.Garbled"):
    """Fails with an error message holding a NUL character (which PostgreSQL text refuses)."""

    n: int


class PoisonError(Exception):
    """The handler of a poison command fails on purpose."""


def create_tables(store: EventStore) -> None:
    """The handlers' bookkeeping tables, in the store's schema."""
    s = quote_schema(store.schema)
    with store.engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE {s}.runs (id bigserial PRIMARY KEY, command_id bigint NOT NULL,"
                " n int NOT NULL, key text, attempt int NOT NULL, pid int NOT NULL,"
                " started_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
                " ended_at timestamptz)"
            )
        )
        # No unique constraint on command_id: a second committed effect must be countable.
        conn.execute(
            text(
                f"CREATE TABLE {s}.effects (id bigserial PRIMARY KEY, command_id bigint NOT NULL,"
                " n int NOT NULL, attempt int NOT NULL, pid int NOT NULL,"
                " committed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
        )
        conn.execute(text(f"CREATE TABLE {s}.fixed (n int PRIMARY KEY)"))
        conn.execute(text(f"CREATE TABLE {s}.gates (n int PRIMARY KEY)"))


@dataclass(frozen=True)
class _Statements:
    start: str
    end: str
    is_fixed: str
    is_open: str
    effect: TextClause


@cache
def _statements() -> _Statements:
    s = quote_schema(os.environ["EVENTSOURCE_SCHEMA"])
    return _Statements(
        start=(
            f"INSERT INTO {s}.runs (command_id, n, key, attempt, pid)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id"
        ),
        end=f"UPDATE {s}.runs SET ended_at = clock_timestamp() WHERE id = %s",
        is_fixed=f"SELECT count(*) FROM {s}.fixed WHERE n = %s",
        is_open=f"SELECT count(*) FROM {s}.gates WHERE n = %s",
        effect=text(
            f"INSERT INTO {s}.effects (command_id, n, attempt, pid)"
            " VALUES (:command_id, :n, :attempt, :pid)"
        ),
    )


_local = threading.local()


def _side_connection() -> psycopg.Connection[Any]:
    """This thread's autocommit connection, outside the attempt's transaction."""
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        url = make_url(os.environ["EVENTSOURCE_DATABASE_URL"])
        conn = psycopg.connect(conninfo(url), autocommit=True)
        _local.conn = conn
    return conn


def _started(ctx: CommandContext, n: int, key: str | None) -> int:
    row = (
        _side_connection()
        .execute(_statements().start, (ctx.command_id, n, key, ctx.attempt, os.getpid()))
        .fetchone()
    )
    assert row is not None
    return int(row[0])


def _ended(run_id: int) -> None:
    _side_connection().execute(_statements().end, (run_id,))


def _wait_for_gate(n: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = _side_connection().execute(_statements().is_open, (n,)).fetchone()
        if row is not None and row[0] > 0:
            return
        time.sleep(0.05)


def _effect(ctx: CommandContext, n: int) -> None:
    params = {"command_id": ctx.command_id, "n": n, "attempt": ctx.attempt, "pid": os.getpid()}
    ctx.tx.execute(_statements().effect, params)


@handler(Work)
def work(cmd: Work, ctx: CommandContext) -> None:
    run_id = _started(ctx, cmd.n, cmd.key)
    delay = cmd.sleep
    if ctx.attempt == 1 and cmd.first_sleep is not None:
        delay = cmd.first_sleep
    time.sleep(delay)
    if cmd.gated and ctx.attempt == 1:
        _wait_for_gate(cmd.n)
    _effect(ctx, cmd.n)
    _ended(run_id)  # after the insert: an ended run did write its effect (committed or not)


@handler(Poison)
def poison(cmd: Poison, ctx: CommandContext) -> None:
    run_id = _started(ctx, cmd.n, None)
    row = _side_connection().execute(_statements().is_fixed, (cmd.n,)).fetchone()
    if row is None or row[0] == 0:
        _ended(run_id)
        raise PoisonError(f"poison command {cmd.n} is not fixed yet")
    _effect(ctx, cmd.n)
    _ended(run_id)


@handler(Garbled)
def garbled(cmd: Garbled, ctx: CommandContext) -> None:
    run_id = _started(ctx, cmd.n, None)
    _ended(run_id)
    raise ValueError(f"undecodable input for command {cmd.n}: b'\x00' -> '\x00'")
