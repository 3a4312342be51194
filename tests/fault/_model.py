"""The read model and the command that the fault suite's worker processes run.

Both leave countable traces, so that a lost or a doubled application shows:

- ``Applied`` (a projection, ``tests.fault._model:Applied``) inserts one row per applied event
  into ``fault_applied`` with the applying process and the time, without a unique key: an event
  applied twice is two rows.
- ``Job`` (a command of queue ``fault``; the probes go to queues of their own) appends one line
  per attempt to ``runs-<pid>.jsonl`` in ``FAULT_RUNS_DIR`` as its handler starts (a file, so
  that it counts attempts whatever the database does), and writes one ``fault_effects`` row
  through ``ctx.tx``, which commits only together with the ack.

The tables live in the schema of ``EVENTSOURCE_SCHEMA`` (the test's own).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from typing import IO

from sqlalchemy import Connection, text

from eventsource import Command, CommandContext, RecordedEvent, handler
from eventsource.db import quote_schema
from projections import Projection

RUNS_DIR_ENV = "FAULT_RUNS_DIR"


def _schema() -> str:
    return quote_schema(os.environ["EVENTSOURCE_SCHEMA"])


def create_tables(conn: Connection, schema: str) -> None:
    """The command handler's table (the projection creates its own in ``setup``)."""
    s = quote_schema(schema)
    conn.execute(
        text(
            f"CREATE TABLE {s}.fault_effects (command_id bigint NOT NULL, n bigint NOT NULL,"
            " attempt int NOT NULL, pid int NOT NULL,"
            " committed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    )


class Applied(Projection):
    """One ``fault_applied`` row per application of any event (no unique key)."""

    name = "fault.applied"

    def setup(self, tx: Connection) -> None:
        tx.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {_schema()}.fault_applied (event_id uuid NOT NULL,"
                " partition int NOT NULL, position bigint NOT NULL, pid int NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
        )

    def reset(self, tx: Connection) -> None:
        tx.execute(text(f"TRUNCATE {_schema()}.fault_applied"))

    def handle_batch(self, records: Sequence[RecordedEvent], tx: Connection) -> None:
        tx.execute(
            text(
                f"INSERT INTO {_schema()}.fault_applied (event_id, partition, position, pid)"
                " SELECT unnest(CAST(:ids AS uuid[])), unnest(CAST(:partitions AS int[])),"
                " unnest(CAST(:positions AS bigint[])), :pid"
            ),
            {
                "ids": [str(r.event_id) for r in records],
                "partitions": [r.partition for r in records],
                "positions": [r.position for r in records],
                "pid": os.getpid(),
            },
        )


class Job(Command, name="fault.Job", queue="fault"):
    """Sleep ``sleep`` seconds, then record the effect in ``ctx.tx``."""

    n: int
    sleep: float = 0.0


_runs_lock = threading.Lock()
_runs_file: list[IO[str]] = []


def _record_run(command_id: int, n: int, attempt: int) -> None:
    line = json.dumps(
        {"id": command_id, "n": n, "attempt": attempt, "pid": os.getpid(), "t": time.time()}
    )
    with _runs_lock:
        if not _runs_file:
            path = os.path.join(os.environ[RUNS_DIR_ENV], f"runs-{os.getpid()}.jsonl")
            _runs_file.append(open(path, "a", encoding="utf-8"))  # noqa: SIM115 - kept open
        _runs_file[0].write(line + "\n")
        _runs_file[0].flush()


@handler(Job)
def job(command: Job, ctx: CommandContext) -> None:
    _record_run(ctx.command_id, command.n, ctx.attempt)
    if command.sleep:
        time.sleep(command.sleep)
    ctx.tx.execute(
        text(
            f"INSERT INTO {_schema()}.fault_effects (command_id, n, attempt, pid)"
            " VALUES (:id, :n, :attempt, :pid)"
        ),
        {"id": ctx.command_id, "n": command.n, "attempt": ctx.attempt, "pid": os.getpid()},
    )
