"""The physical reference: plain INSERTs with pgbench against the same server.

Three cases, each ``pgbench -n -f script.sql -T seconds -c C -j J`` on a table shaped like the
events table (uuid unique key, text, jsonb of ~60 bytes, timestamp), in a scratch schema that is
dropped afterwards:

- ``pgbench_insert1_c1``: one-row INSERT per transaction, 1 client;
- ``pgbench_insert1_c16``: one-row INSERT per transaction, 16 clients;
- ``pgbench_insert100_c1``: one 100-row INSERT per transaction, 1 client.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from eventsource._internal import quote_schema

from ._harness import Result, Run, summarize

__all__ = ["CASES", "PgbenchCase", "find_pgbench", "run_pgbench"]

PAYLOAD = '{"name":"counter-00000001","owner":"bench-owner","limit":1000000}'  # as bench.*


@dataclass(frozen=True)
class PgbenchCase:
    name: str
    rows: int  # rows per transaction
    clients: int


CASES = (
    PgbenchCase("pgbench_insert1_c1", rows=1, clients=1),
    PgbenchCase("pgbench_insert1_c16", rows=1, clients=16),
    PgbenchCase("pgbench_insert100_c1", rows=100, clients=1),
)

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


def run_case(url: URL, case: PgbenchCase, *, seconds: int, pgbench: str) -> Run:
    """One pgbench run of ``case`` in a fresh scratch table."""
    conninfo, env = _libpq(url)
    jobs = max(1, min(case.clients, os.cpu_count() or 1))
    with _scratch_table(url) as table, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.sql"
        script.write_text(_script(table, case.rows))
        command = [pgbench, "-n", "-f", str(script), "-T", str(seconds)]
        command += ["-c", str(case.clients), "-j", str(jobs), conninfo]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr.strip()}")
    tps_match, txs_match = _TPS.search(done.stdout), _TXS.search(done.stdout)
    if tps_match is None or txs_match is None:
        raise RuntimeError(f"could not read pgbench's output:\n{done.stdout}")
    tps, transactions = float(tps_match.group(1)), int(txs_match.group(1))
    # pgbench's tps excludes connection time; express the run as rows over that time.
    rows = transactions * case.rows
    return Run(
        rows / (tps * case.rows),
        rows,
        {"tps": round(tps, 1), "clients": case.clients, "jobs": jobs, "rows_per_tx": case.rows},
    )


def run_pgbench(
    url: URL, case: PgbenchCase, *, seconds: int = 10, repeat: int = 3, pgbench: str | None = None
) -> Result:
    """The median of ``repeat`` pgbench runs of ``case``, in rows per second."""
    executable = find_pgbench(pgbench)
    runs = [run_case(url, case, seconds=seconds, pgbench=executable) for _ in range(repeat)]
    return summarize(case.name, round(statistics.median(run.count for run in runs)), "rows", runs)
