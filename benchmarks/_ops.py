"""The operations page on a large store: ``ops_page``.

Set-up (untimed): N events (default 1,000,000) written straight into the log's table, spread
evenly over the store's partitions (run with ``--partitions 64`` for the issue's target), ten
per stream, recorded over the last day; 100,000 commands (pending, running and dead, over four
queues, the dead ones with tracebacks); three projections with checkpoints behind the heads, two
partitions stopped on an error, live workers; then ``VACUUM ANALYZE``. Written with SQL, not
through ``append``: the set-up is not what is measured, and it takes seconds this way.

Timed: every page of the app (overview, projections, command queue, a stream, a partition,
``/metrics``) loaded ``PAGE_LOADS`` times in-process through Starlette's test client, database
reads and rendering included. Before timing, each statement the pages run is EXPLAINed: a
sequential scan of the events table fails the workload.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from typing import Any

from sqlalchemy import text

from eventsource import EventStore
from eventsource._internal import Queries, command_queries, quote_schema

from ._harness import Bench, Run
from ._registry import workload

__all__: list[str] = []

COMMANDS = 100_000
PAGE_LOADS = 20
EVENTS_PER_STREAM = 10
QUEUES = ("default", "mail", "billing", "reports")


def _seed(store: EventStore, n: int) -> None:
    """The large store described in the module docstring, written with SQL (untimed)."""
    s = quote_schema(store.schema)
    parts = store.partitions
    per = n // parts
    sql = [
        f"""INSERT INTO {s}.events (partition, position, event_id, stream_id, stream_version,
               event_type, schema_version, data, metadata, recorded_at)
            SELECT p, pos, gen_random_uuid(),
                   'bench-' || p || '-' || ((pos - 1) / {EVENTS_PER_STREAM}),
                   (pos - 1) % {EVENTS_PER_STREAM} + 1,
                   CASE WHEN pos % {EVENTS_PER_STREAM} = 1 THEN 'bench.CounterCreated'
                        ELSE 'bench.CounterIncremented' END, 1,
                   jsonb_build_object('name', 'counter-' || pos, 'owner', 'bench', 'by', 1),
                   '{{}}'::jsonb,
                   now() - make_interval(secs => 86400.0 * ({per} - pos) / {per})
            FROM generate_series(0, {parts - 1}) AS p, generate_series(1, {per}) AS pos""",
        f"UPDATE {s}.partitions SET head = {per}",
        f"""INSERT INTO {s}.commands (queue, command_type, payload, status, attempts,
               max_attempts, run_at, lease_until, worker, last_error, error_traceback,
               enqueued_at, started_at, updated_at)
            SELECT (ARRAY{list(QUEUES)!r})[1 + i % {len(QUEUES)}], 'bench.Noop',
                   jsonb_build_object('n', i), st,
                   CASE WHEN st = 'pending' THEN 0 ELSE 1 END, 1,
                   now() - make_interval(secs => i % 600),
                   CASE WHEN st = 'running' THEN now() + interval '1 minute' END,
                   CASE WHEN st = 'running' THEN 'worker-' || (i % 8) END,
                   CASE WHEN st = 'dead' THEN 'RuntimeError: failed ' || i END,
                   CASE WHEN st = 'dead' THEN repeat('Traceback line' || chr(10), 20) END,
                   now() - make_interval(secs => i % 3600),
                   CASE WHEN st <> 'pending' THEN now() END, now()
            FROM (SELECT i, CASE WHEN i % 100 < 90 THEN 'pending'
                                 WHEN i % 100 < 95 THEN 'running' ELSE 'dead' END AS st
                  FROM generate_series(1, {COMMANDS}) AS i) c""",
        f"""INSERT INTO {s}.projection_checkpoints (projection, partition, position, owner,
               lease_until, error, error_position, error_attempts, error_at)
            SELECT name, p, greatest({per} - (p * 37 + length(name)) % 500, 0),
                   'worker-' || (p % 4), now() + interval '5 s',
                   CASE WHEN name = 'reports' AND p IN (3, 17) THEN 'ValueError: poison' END,
                   CASE WHEN name = 'reports' AND p IN (3, 17)
                        THEN greatest({per} - (p * 37 + length(name)) % 500, 0) + 1 END,
                   CASE WHEN name = 'reports' AND p IN (3, 17) THEN 5 ELSE 0 END,
                   CASE WHEN name = 'reports' AND p IN (3, 17) THEN now() END
            FROM unnest(ARRAY['balances', 'reports', 'search']) AS name,
                 generate_series(0, {parts - 1}) AS p""",
        f"""INSERT INTO {s}.projection_state (projection)
            SELECT unnest(ARRAY['balances', 'reports', 'search'])""",
        f"""INSERT INTO {s}.projection_workers (projection, worker_id)
            SELECT name, 'worker-' || w FROM unnest(ARRAY['balances', 'reports', 'search'])
                AS name, generate_series(0, 3) AS w""",
    ]
    with store.engine.begin() as conn:
        for statement in sql:
            conn.execute(text(statement))
    engine = store.engine.execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for table in ("events", "commands", "projection_checkpoints", "partitions"):
            conn.execute(text(f"VACUUM (ANALYZE) {s}.{table}"))


def _statements(store: EventStore) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Every statement the pages run, with parameters for EXPLAIN."""
    from eventsource.ops._queries import ops_queries  # noqa: PLC0415 - the ops extra
    from eventsource.ops._snapshot import RATE_WINDOW, WORKER_TTL  # noqa: PLC0415
    from projections._queries import projection_queries  # noqa: PLC0415

    ops = ops_queries(store.schema)
    commands = command_queries(store.schema)
    store_sql = Queries.for_schema(store.schema)
    stream = {"stream_id": "bench-5-10", "after": 0, "limit": 100}
    return {
        "heads": (ops.heads, None),
        "append_rate": (ops.append_rate, {"window": RATE_WINDOW}),
        "lag_seconds": (ops.lag_seconds, None),
        "live_workers": (ops.live_workers, {"ttl": WORKER_TTL}),
        "busy_command_workers": (ops.busy_command_workers, None),
        "command_figures": (ops.command_figures, None),
        "read_stream_page": (ops.read_stream_page, stream),
        "projections.status": (projection_queries(store).status, None),
        "commands.dead": (
            commands.list,
            {"statuses": ["dead"], "queue": None, "limit": 50},
        ),
        "read_partition": (
            store_sql.read_partition,
            {"partition": 5, "after": 1000, "limit": 100},
        ),
    }


def _scans(plan: dict[str, Any]) -> list[str]:
    """The sequential scans of a JSON plan, as ``table`` names."""
    found = [plan["Relation Name"]] if plan.get("Node Type") == "Seq Scan" else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


def explain(store: EventStore) -> dict[str, list[str]]:
    """Per statement, the tables it scans sequentially; ``RuntimeError`` if one is events."""
    out: dict[str, list[str]] = {}
    with store._raw() as conn:
        for name, (statement, params) in _statements(store).items():
            row = conn.execute(f"EXPLAIN (FORMAT JSON) {statement}", params).fetchone()
            assert row is not None
            plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
            out[name] = _scans(plan[0]["Plan"])
    bad = {name: scans for name, scans in out.items() if "events" in scans}
    if bad:
        raise RuntimeError(f"statements scan the event log: {bad}")
    return out


@workload(
    "ops_page",
    default_n=1_000_000,
    unit="pages",
    description="the operations page's pages and /metrics on a store of N events and 100,000"
    " commands (use --partitions 64); fails if a statement seq-scans the events",
)
def ops_page(bench: Bench, n: int) -> Run:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette's client now prefers the httpx2 fork
        from starlette.testclient import TestClient  # noqa: PLC0415

    from eventsource.ops import ops_app  # noqa: PLC0415 - the ops extra

    store = bench.store
    _seed(store, n)
    scans = explain(store)
    pages = {
        "overview": "/",
        "projections": "/projections",
        "commands": "/commands",
        "stream": "/streams?stream=bench-5-10",
        "partition": "/partitions/5?after=1000",
        "metrics": "/metrics",
    }
    times: dict[str, list[float]] = {name: [] for name in pages}
    with TestClient(ops_app(store, token="bench-token-0123456789")) as client:
        for path in pages.values():  # warm up: connections, templates, prepared statements
            assert client.get(path).status_code == 200, path
        with bench.timed() as timer:
            for _ in range(PAGE_LOADS):
                for name, path in pages.items():
                    start = time.perf_counter()
                    response = client.get(path)
                    times[name].append(time.perf_counter() - start)
                    assert response.status_code == 200, path
    extra: dict[str, Any] = {"partitions": store.partitions, "commands": COMMANDS}
    for name, samples in times.items():
        extra[f"{name}_p50_ms"] = round(1000 * statistics.median(samples), 1)
        extra[f"{name}_max_ms"] = round(1000 * max(samples), 1)
    extra["seq_scans"] = (
        ",".join(sorted({f"{name}:{t}" for name, tables in scans.items() for t in tables}))
        or "none"
    )
    return Run(timer.seconds, PAGE_LOADS * len(pages), extra)
