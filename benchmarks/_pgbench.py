"""The physical reference: plain INSERTs, and the store's own append, with pgbench.

Each case is ``pgbench -n -f script.sql -T seconds -c C -j J`` against the same server. The
insert cases write a table shaped like the events table (uuid unique key, text, jsonb of ~60
bytes, timestamp), in a scratch schema that is dropped afterwards:

- ``pgbench_insert1_c1``: one-row INSERT per transaction, 1 client;
- ``pgbench_insert1_c16``: one-row INSERT per transaction, 16 clients;
- ``pgbench_insert100_c1``: one 100-row INSERT per transaction, 1 client.

``pgbench_append1_c1`` runs the store's own one-event append to a new stream
(``append_one_event_new``, prepared as the store prepares it) on a fresh store schema, 1
client: what ``create`` would do with no client work at all.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from eventsource._internal import quote_schema
from eventsource.store._queries import store_queries

from ._harness import Result, Run, fresh_store, summarize

__all__ = ["CASES", "PgbenchCase", "append_script", "find_pgbench", "run_pgbench"]

PAYLOAD = '{"name":"counter-00000001","owner":"bench-owner","limit":1000000}'  # as bench.*


@dataclass(frozen=True)
class PgbenchCase:
    name: str
    rows: int  # rows per transaction
    clients: int
    append: bool = False  # the store's one-event append instead of a plain INSERT


CASES = (
    PgbenchCase("pgbench_insert1_c1", rows=1, clients=1),
    PgbenchCase("pgbench_insert1_c16", rows=1, clients=16),
    PgbenchCase("pgbench_insert100_c1", rows=100, clients=1),
    PgbenchCase("pgbench_append1_c1", rows=1, clients=1, append=True),
)

# The values of append_one_event_new's parameters in the pgbench script: a new stream per
# transaction (``r`` is drawn by the script), the event of bench.created.
_APPEND_VALUES = {
    "partition": ":p",
    "stream_id": "('pgbench-' || :client_id || '-' || :r)",
    "n": "1",
    "first_id": "gen_random_uuid()",
    "type": "'bench.CounterCreated'",
    "schema_version": "1",
    "data": "'" + PAYLOAD.replace("'", "''") + "'",
    "metadata": "'{}'",
}
_PLACEHOLDER = re.compile(r"%\((\w+)\)[sb]")

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_TXS = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)


def find_pgbench(path: str | None = None) -> str:
    """The pgbench executable: ``path``, else on PATH, else /usr/bin/pgbench."""
    found = path or shutil.which("pgbench") or "/usr/bin/pgbench"
    if not Path(found).is_file():
        raise FileNotFoundError(
            f"pgbench not found at {found}: install postgresql-client or pass --pgbench-path"
        )
    return found


def _script(table: str, rows: int) -> str:
    payload = PAYLOAD.replace("'", "''")
    if rows == 1:
        return (
            f"INSERT INTO {table} (event_id, stream_id, data)"
            f" VALUES (gen_random_uuid(), 's-' || :client_id, '{payload}');\n"
        )
    return (
        f"INSERT INTO {table} (event_id, stream_id, data)"
        f" SELECT gen_random_uuid(), 's-' || :client_id || '-' || g, '{payload}'::jsonb"
        f" FROM generate_series(1, {rows}) AS g;\n"
    )


def append_script(schema: str, partitions: int) -> str:
    """The pgbench script of ``pgbench_append1_c1``: the store's ``append_one_event_new`` on
    ``schema``, its placeholders replaced by pgbench variables and constants."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in _APPEND_VALUES:
            raise RuntimeError(f"append_one_event_new has a parameter {name!r} pgbench lacks")
        return _APPEND_VALUES[name]

    statement = _PLACEHOLDER.sub(value, store_queries(schema).append_one_event_new)
    draws = f"\\set p random(0, {partitions - 1})\n\\set r random(1, 1000000000000000)\n"
    return draws + statement.strip() + ";\n"


@contextmanager
def _scratch_table(url: URL) -> Iterator[str]:
    schema = quote_schema(f"pgbench_{secrets.token_hex(6)}")
    engine = create_engine(url, poolclass=None)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
            conn.execute(
                text(
                    f"CREATE TABLE {schema}.events (id bigserial PRIMARY KEY,"
                    " event_id uuid NOT NULL UNIQUE, stream_id text NOT NULL,"
                    " data jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())"
                )
            )
        yield f"{schema}.events"
    finally:
        try:
            with engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        finally:
            engine.dispose()


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq URI for pgbench (password passed in PGPASSWORD, not on the command line)."""
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def run_case(
    url: URL, case: PgbenchCase, *, seconds: int, pgbench: str, partitions: int = 16
) -> Run:
    """One pgbench run of ``case`` in a fresh scratch table (or store schema)."""
    conninfo, env = _libpq(url)
    jobs = max(1, min(case.clients, os.cpu_count() or 1))
    command = [pgbench, "-n", "-T", str(seconds), "-c", str(case.clients), "-j", str(jobs)]
    written = None
    with ExitStack() as stack:
        script = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "script.sql"
        if case.append:
            store = stack.enter_context(fresh_store(url, partitions=partitions, pool_size=1))
            script.write_text(append_script(store.schema, partitions))
            command += ["-M", "prepared"]
        else:
            script.write_text(_script(stack.enter_context(_scratch_table(url)), case.rows))
        command += ["-f", str(script), conninfo]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if case.append and done.returncode == 0:
            # The events stored (an append whose stream id was drawn twice writes nothing).
            with store.engine.connect() as conn:
                events = f"{quote_schema(store.schema)}.events"
                written = conn.execute(text(f"SELECT count(*) FROM {events}")).scalar_one()
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr.strip()}")
    tps_match, txs_match = _TPS.search(done.stdout), _TXS.search(done.stdout)
    if tps_match is None or txs_match is None:
        raise RuntimeError(f"could not read pgbench's output:\n{done.stdout}")
    tps, transactions = float(tps_match.group(1)), int(txs_match.group(1))
    # pgbench's tps excludes connection time; express the run as rows over that time.
    rows = transactions * case.rows if written is None else written
    return Run(
        transactions / tps,
        rows,
        {"tps": round(tps, 1), "clients": case.clients, "jobs": jobs, "rows_per_tx": case.rows},
    )


def run_pgbench(
    url: URL,
    case: PgbenchCase,
    *,
    seconds: int = 10,
    repeat: int = 3,
    pgbench: str | None = None,
    partitions: int = 16,
) -> Result:
    """The median of ``repeat`` pgbench runs of ``case``, in rows per second."""
    executable = find_pgbench(pgbench)
    runs = [
        run_case(url, case, seconds=seconds, pgbench=executable, partitions=partitions)
        for _ in range(repeat)
    ]
    return summarize(case.name, round(statistics.median(run.count for run in runs)), "rows", runs)
