"""Projection workers as real processes (`eventsource projections run|replay|status|retry|skip`):
killed and added while writers append, stopped by SIGTERM, replayed under load, poisoned."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import projections
from eventsource import AppendResult, EventStore
from tests.domain import Deposited
from tests.projection_domain import (
    POISON,
    READ_SCHEMA_ENV,
    Ledger,
    ledger_from_log,
    ledger_read_model,
    write_workload,
)

from ._projection_support import (
    LEDGER,
    Writers,
    at_heads,
    one_line_error,
    run_no_tty,
    wait_until,
    worker_processes,
)
from ._support import cli_env, describe, run_cli, scalar

NAME = Ledger.name


@pytest.fixture
def store8(database_url: str, schema: str) -> Iterator[EventStore]:
    """An upgraded store in the test's schema with 8 partitions."""
    store = EventStore.from_url(database_url, schema=schema, partitions=8)
    store.upgrade()
    yield store
    store.close()


def env_for(database_url: str, schema: str) -> dict[str, str]:
    """The CLI's environment: the server, and the Ledger's read model in the test's schema."""
    return cli_env(database_url, **{READ_SCHEMA_ENV: schema})


def status_json(env: dict[str, str], schema: str) -> list[dict[str, object]]:
    result = run_cli(["projections", "status", "--schema", schema, "--json"], env)
    assert result.returncode == 0, describe(result)
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


def worker_rows(database_url: str, schema: str, worker_id: str) -> tuple[object, object]:
    """How many checkpoints the worker owns, and whether it is still a member of the group."""
    owned = scalar(
        database_url,
        f"SELECT count(*) FROM {schema}.projection_checkpoints WHERE owner = '{worker_id}'",
    )
    member = scalar(
        database_url,
        f"SELECT count(*) FROM {schema}.projection_workers WHERE worker_id = '{worker_id}'",
    )
    return owned, member


def test_killed_and_added_workers_under_load_build_the_exact_read_model(
    database_url: str, schema: str, store8: EventStore, tmp_path: Path
) -> None:
    """Two workers run while writers append; one is SIGKILLed mid-stream and another joins;
    once every partition is at its head the read model equals a fresh computation from the
    log (nothing lost, nothing applied twice). SIGTERM then stops each survivor with exit 0,
    its leases released and its membership gone."""
    env = env_for(database_url, schema)
    with worker_processes(env, schema, tmp_path) as start, Writers(store8, 3) as writers:
        w1, w2 = start("w1"), start("w2")
        writers.wait_written(1500)

        def both_applied() -> bool:
            rows = [s for s in projections.status(store8) if s.projection == NAME]
            busy = {s.owner for s in rows if s.position > 0}
            return {"w1", "w2"} <= busy

        wait_until(both_applied, 30, "both workers to apply events")
        assert w1.alive() and w2.alive(), w1.output() + w2.output()
        assert w1.kill() == -9
        w3 = start("w3")
        writers.wait_written(writers.written + 2500)
        writers.stop()
        total = writers.written
        assert total >= 4000

        def settled() -> bool:
            owners = {s.owner for s in projections.status(store8) if s.projection == NAME}
            return owners == {"w2", "w3"} and at_heads(store8, NAME)

        took = wait_until(settled, 60, "the survivors to share the partitions at the heads")
        assert w2.alive() and w3.alive(), w2.output() + w3.output()
        expected = ledger_from_log(store8)
        assert expected.events == total == sum(store8.heads().values())
        actual = ledger_read_model(store8.engine, schema)
        assert [k for k, n in actual.applied.items() if n > 1] == []  # none applied twice
        assert actual == expected, f"caught up in {took:.1f}s but the read model differs"

        rows = status_json(env, schema)
        assert len(rows) == 8
        for row in rows:
            assert row["projection"] == NAME
            assert row["position"] == row["head"]
            assert row["lag"] == 0
            assert row["owner"] in {"w2", "w3"}
            assert row["error"] is None
        assert {row["owner"] for row in rows} == {"w2", "w3"}  # the newcomer got a share

        assert w3.terminate(timeout=5) == 0, w3.output()
        assert worker_rows(database_url, schema, "w3") == (0, 0)
        assert w2.terminate(timeout=5) == 0, w2.output()
        assert worker_rows(database_url, schema, "w2") == (0, 0)
        assert (
            scalar(
                database_url,
                f"SELECT count(*) FROM {schema}.projection_checkpoints WHERE owner IS NOT NULL",
            )
            == 0
        )
        assert "Traceback" not in w2.output(10**6) + w3.output(10**6)


def test_replay_rebuilds_while_a_live_worker_steps_aside_and_resumes(
    database_url: str, schema: str, store: EventStore, tmp_path: Path
) -> None:
    """`projections replay --yes` rebuilds a damaged read model while a worker runs and a
    writer appends; it reports the events applied; the worker then resumes every partition
    and the read model equals the log."""
    env = env_for(database_url, schema)
    write_workload(store, seed=1, ops=300, prefix="r")
    with worker_processes(env, schema, tmp_path) as start:
        worker = start("live")
        wait_until(lambda: at_heads(store, NAME, {"live"}), 30, "the live worker to catch up")
        before = sum(store.heads().values())
        ledger = Ledger(schema)
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f"DELETE FROM {ledger.s}.ledger_applied WHERE mod(version, 2) = 0")
            conn.exec_driver_sql(f"UPDATE {ledger.s}.ledger_totals SET total = 0")
        assert ledger_read_model(store.engine, schema) != ledger_from_log(store)

        writer = threading.Thread(
            target=write_workload, args=(store,), kwargs={"seed": 2, "ops": 150, "prefix": "rw"}
        )
        writer.start()
        try:
            result = run_no_tty(["projections", "replay", LEDGER, "--yes", "--schema", schema], env)
        finally:
            writer.join(timeout=60)
        assert result.returncode == 0, describe(result) + worker.output()
        match = re.search(rf"replayed {re.escape(NAME)}: (\d+) events applied", result.stdout)
        assert match, describe(result)
        assert int(match.group(1)) >= before

        store.append("after-replay", [Deposited(amount=5)])
        wait_until(lambda: at_heads(store, NAME, {"live"}), 30, "the live worker to resume")
        assert worker.alive(), worker.output()
        assert ledger_read_model(store.engine, schema) == ledger_from_log(store)
        assert scalar(
            database_url, f"SELECT replayed_at IS NOT NULL FROM {schema}.projection_state"
        )
        assert "partitions released" in worker.output(10**6)  # it stepped aside


def poison(store: EventStore) -> AppendResult:
    """A POISON deposit mid-stream, with one more event behind it; the poison's place."""
    result = store.append("poisoned", [Deposited(amount=1), Deposited(amount=POISON)])
    assert isinstance(result, AppendResult)
    store.append("poisoned", [Deposited(amount=2)])
    return result


def others_at_heads_and_stopped(store: EventStore, partition: int) -> bool:
    """The partition is stopped on an error and every other one is at its head."""
    rows = {s.partition: s for s in projections.status(store) if s.projection == NAME}
    return (
        len(rows) == store.partitions
        and rows[partition].error is not None
        and all(s.position == s.head and s.error is None for p, s in rows.items() if p != partition)
    )


def test_a_worker_process_stops_a_poisoned_partition(
    database_url: str, schema: str, store: EventStore, tmp_path: Path
) -> None:
    """With the CLI's default retry delays, a worker process stops the poisoned partition after
    3 attempts and records the error, while the other partitions reach their heads."""
    env = env_for(database_url, schema)
    write_workload(store, seed=3, ops=40, prefix="p")
    with worker_processes(env, schema, tmp_path) as start:
        worker = start("w")
        wait_until(lambda: at_heads(store, NAME), 30, "the worker to catch up")
        bad = poison(store)
        write_workload(store, seed=4, ops=40, prefix="p2")
        wait_until(
            lambda: others_at_heads_and_stopped(store, bad.partition),
            8,  # 3 attempts over 1.2 s of retry delays
            "the poisoned partition to stop",
        )
        assert worker.alive(), worker.output()
        row = {r["partition"]: r for r in status_json(env, schema)}[bad.partition]
        assert (row["position"], row["error_position"], row["error_attempts"]) == (
            bad.position - 1,
            bad.position,
            3,
        )


def test_skip_from_the_cli_moves_a_stopped_partition_on_while_its_worker_runs(
    database_url: str, schema: str, store: EventStore, tmp_path: Path
) -> None:
    """A partition stopped on a poison event stays stopped under a worker process; `status`
    shows the error; `retry` and `skip` refuse healthy partitions; `skip` moves the stopped
    one past the event (and logs it) and the running worker carries on to the head."""
    env = env_for(database_url, schema)
    write_workload(store, seed=5, ops=60, prefix="s")
    bad = poison(store)
    partition = bad.partition
    # Stopped by an in-process worker with short retry delays (a worker process with the
    # defaults does not stop: see the test above).
    projections.run(
        store,
        [Ledger(schema)],
        stop_when_caught_up=True,
        lease_ttl=2.0,
        heartbeat_interval=0.2,
        retry_delays=(0.01,),
    )
    with worker_processes(env, schema, tmp_path) as start:
        worker = start("w")
        write_workload(store, seed=6, ops=60, prefix="s2")
        store.append("poisoned", [Deposited(amount=3)])
        wait_until(
            lambda: (
                others_at_heads_and_stopped(store, partition)
                and {s.owner for s in projections.status(store)} == {"w"}
            ),
            30,
            "the worker to take every partition and catch up on the healthy ones",
        )
        rows = {row["partition"]: row for row in status_json(env, schema)}
        stopped = rows[partition]
        assert stopped["position"] == bad.position - 1  # not skipped silently
        assert stopped["error_position"] == bad.position
        assert stopped["error_attempts"] == 3
        assert stopped["lag"] == stopped["head"] - stopped["position"] > 1  # type: ignore[operator]
        assert "PoisonError" in str(stopped["error"])
        assert stopped["owner"] == "w"
        assert all(row["error"] is None for p, row in rows.items() if p != partition)

        table = run_cli(["projections", "status", "--schema", schema], env)
        assert table.returncode == 0, describe(table)
        assert f"at {bad.position} after 3 attempts" in table.stdout, table.stdout
        assert "PoisonError" in table.stdout

        healthy = (partition + 1) % store.partitions
        for action in ("retry", "skip"):
            refused = run_cli(
                ["projections", action, NAME, "--partition", str(healthy), "--schema", schema],
                env,
            )
            assert refused.returncode == 1, describe(refused)
            assert f"partition {healthy} is not stopped" in one_line_error(refused)

        skipped = run_cli(
            ["projections", "skip", NAME, "--partition", str(partition), "--schema", schema], env
        )
        assert skipped.returncode == 0, describe(skipped)
        assert f"skipped the test.Deposited event at {bad.position}" in skipped.stdout

        wait_until(lambda: at_heads(store, NAME, {"w"}), 30, "the worker to carry on")
        assert worker.alive(), worker.output()
        excluded = frozenset({(partition, bad.position)})
        assert ledger_read_model(store.engine, schema) == ledger_from_log(store, excluded)
        assert (
            scalar(
                database_url,
                f"SELECT count(*) FROM {schema}.projection_skips"
                f" WHERE partition = {partition} AND position = {bad.position}",
            )
            == 1
        )


def test_bad_input_exits_2_with_one_line(database_url: str, schema: str, store: EventStore) -> None:
    """An unknown MODULE:CLASS, a malformed target, two projections with one name and a
    replay without --yes or a terminal each exit 2 with one line saying what is wrong; the
    refused replay resets nothing."""
    env = env_for(database_url, schema)

    missing = run_no_tty(["projections", "run", "nosuch.module:X", "--schema", schema], env)
    assert missing.returncode == 2, describe(missing)
    assert "nosuch.module" in one_line_error(missing)

    no_class = run_no_tty(["projections", "run", "tests.projection_domain:Nope"], env)
    assert no_class.returncode == 2, describe(no_class)
    assert "'Nope'" in one_line_error(no_class)

    twice = run_no_tty(["projections", "run", LEDGER, LEDGER, "--schema", schema], env)
    assert twice.returncode == 2, describe(twice)
    assert f"two projections are named {NAME!r}" in one_line_error(twice)

    write_workload(store, seed=5, ops=30, prefix="b")
    projections.run(store, [Ledger(schema)], stop_when_caught_up=True)
    model = ledger_read_model(store.engine, schema)
    replay = run_no_tty(["projections", "replay", LEDGER, "--schema", schema], env)
    assert replay.returncode == 2, describe(replay)
    assert "--yes" in one_line_error(replay)
    assert ledger_read_model(store.engine, schema) == model
    assert scalar(database_url, f"SELECT replayed_at FROM {schema}.projection_state") is None
