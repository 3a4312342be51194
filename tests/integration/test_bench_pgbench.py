"""The harness's pgbench reference for the store's own append statement: its script holds
the store's statement with every parameter given, and a short run stores one event per
transaction in a schema that is dropped afterwards."""

from __future__ import annotations

import psycopg
import pytest

from benchmarks._pgbench import CASES, append_script, find_pgbench, run_case
from eventsource.db import conninfo, resolve_url

APPEND = next(case for case in CASES if case.append)


def test_the_append_script_gives_every_parameter_of_the_statement() -> None:
    script = append_script("bench_script", 16)
    assert "%(" not in script
    assert script.startswith("\\set p random(0, 15)\n\\set r random(")
    assert '"bench_script".events' in script
    assert '"bench_script".partitions' in script
    assert script.rstrip().endswith(";")
    assert script.count(";") == 1  # one pgbench command


def test_a_schema_name_that_is_not_an_identifier_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        append_script('x"; DROP TABLE y; --', 16)


def _bench_schemas(database_url: str) -> set[str]:
    with psycopg.connect(conninfo(resolve_url(database_url))) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_%'")
        return {row[0] for row in rows}


def test_a_short_run_stores_one_event_per_transaction(database_url: str) -> None:
    try:
        pgbench = find_pgbench()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    url = resolve_url(database_url)
    before = _bench_schemas(database_url)
    run = run_case(url, APPEND, seconds=1, pgbench=pgbench, partitions=4)
    assert run.count > 0
    assert run.extra["tps"] > 0
    # rows over pgbench's time: each transaction stored its event
    assert run.count == pytest.approx(run.extra["tps"] * run.seconds, rel=0.01)
    assert _bench_schemas(database_url) == before  # the run's schema is dropped
