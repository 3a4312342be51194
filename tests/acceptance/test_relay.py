"""The relay as a process: killed mid-stream and restarted while writers append, JetStream
holds every event exactly once and in partition order; its CLI's status and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventsource import NO_STREAM, EventStore
from tests.acceptance._support import REPO_ROOT, cli_env, describe
from tests.domain import Deposited, Opened
from tests.integration.test_jetstream_projections import run_from_jetstream
from tests.integration.test_relay import fill, relay
from tests.nats_support import free_port, read_stream

pytestmark = pytest.mark.slow

TOTAL = 20_000


def _cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a CLI command of this checkout to its end (at most a minute), output captured."""
    return subprocess.run(
        argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def relay_command(*args: str) -> list[str]:
    """`eventsource relay ARGS` run from this tree (not whatever is installed)."""
    return [sys.executable, "-m", "eventsource", "relay", *args]


def relay_env(database_url: str) -> dict[str, str]:
    """The CLI's environment, importing `eventsource` from this repository."""
    env = cli_env(database_url, EVENTSOURCE_LOG_FORMAT="json")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def relay_store(database_url: str, schema: str) -> Iterator[EventStore]:
    """An upgraded store with 8 partitions."""
    store = EventStore.from_url(database_url, schema=schema, partitions=8)
    store.upgrade()
    yield store
    store.close()


def _write(store: EventStore, stop: threading.Event) -> None:
    """Append TOTAL events to 200 streams in batches of up to 10, then return."""
    written, i = 0, 0
    while written < TOTAL and not stop.is_set():
        stream = f"acc-{i % 200}"
        if i < 200:
            store.append(stream, [Opened(owner=stream)], NO_STREAM)
            written += 1
        else:
            count = min(10, TOTAL - written)
            store.append(stream, [Deposited(amount=n + 1) for n in range(count)])
            written += count
        i += 1


def _relayed(store: EventStore, stream: str) -> int:
    """The events relayed so far, by the checkpoints."""
    with store.engine.connect() as conn:
        value = conn.exec_driver_sql(
            f'SELECT coalesce(sum(position), 0) FROM "{store.schema}".relay_checkpoints'
            " WHERE relay = %(relay)s",
            {"relay": stream},
        ).scalar()
    return int(value or 0)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `eventsource relay ARGS`, its output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            relay_command(*args), env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT
        )


def test_relay_killed_mid_stream_and_restarted_relays_each_event_once_in_order(
    relay_store: EventStore,
    database_url: str,
    nats_url: str,
    target: tuple[str, str],
    tmp_path: Path,
) -> None:
    """SIGKILL mid-stream, restart, writers appending throughout: every event once, in order."""
    stream, prefix = target
    env = relay_env(database_url)
    args = [
        "run",
        nats_url,
        "--stream",
        stream,
        "--subject-prefix",
        prefix,
        "--lease-ttl",
        "2",
        "--duplicate-window",
        "60",
        "--batch-size",
        "300",
        "--schema",
        relay_store.schema,
    ]
    stop = threading.Event()
    writer = threading.Thread(target=_write, args=(relay_store, stop))
    writer.start()
    first = _start(args, env, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 60
        while _relayed(relay_store, stream) < 3000:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the relay made no progress"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert writer.is_alive(), "the writers finished before the kill: raise TOTAL"
        second = _start(args, env, tmp_path / "second.log")
        try:
            writer.join(120)
            deadline = time.monotonic() + 120
            while _relayed(relay_store, stream) < TOTAL:
                assert second.poll() is None, (tmp_path / "second.log").read_text()
                assert time.monotonic() < deadline, "the restarted relay did not catch up"
                time.sleep(0.05)
            second.send_signal(signal.SIGTERM)
            second.wait(30)
            assert second.returncode == 0, (tmp_path / "second.log").read_text()
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        stop.set()
        writer.join(30)
        if first.poll() is None:
            first.kill()

    messages = read_stream(nats_url, stream)
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids)) == TOTAL
    with relay_store.engine.connect() as conn:
        stored = {
            str(r[0])
            for r in conn.exec_driver_sql(f'SELECT event_id FROM "{relay_store.schema}".events')
        }
    assert set(ids) == stored
    by_subject: dict[str, list[int]] = {}
    for m in messages:
        by_subject.setdefault(m.subject, []).append(int(m.headers["Es-Position"]))
    assert len(by_subject) == 8
    for subject, positions in by_subject.items():
        assert positions == list(range(1, len(positions) + 1)), subject

    status = _cli(relay_command("status", "--json", "--schema", relay_store.schema), env)
    assert status.returncode == 0, describe(status)
    rows = json.loads(status.stdout)
    assert {r["partition"] for r in rows} == set(range(8))
    assert all(r["relay"] == stream and r["lag"] == 0 and r["error"] is None for r in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "http://x:1"], "NATS URL"),
        (["run", "nats://127.0.0.1:4222", "--stream", "a b"], "stream name"),
        (["run", "nats://127.0.0.1:4222", "--stream", "a.b"], "stream name"),
        (["run", "nats://127.0.0.1:4222", "--subject-prefix", "a.*"], "subject prefix"),
        (["run", "nats://127.0.0.1:4222", "--subject-prefix", "a b"], "subject prefix"),
        (["run", "nats://127.0.0.1:4222", "--lease-ttl", "0"], "--lease-ttl"),
        (["run", "nats://127.0.0.1:4222", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_relay_arguments_exit_2_and_write_nothing(
    relay_store: EventStore, database_url: str, args: list[str], message: str
) -> None:
    """Bad arguments: one line naming what is wrong, exit 2, no checkpoint created."""
    result = _cli(relay_command(*args, "--schema", relay_store.schema), relay_env(database_url))
    assert result.returncode == 2, describe(result)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, describe(result)
    with relay_store.engine.connect() as conn:
        count = conn.exec_driver_sql(
            f'SELECT count(*) FROM "{relay_store.schema}".relay_checkpoints'
        ).scalar()
    assert count == 0


@pytest.fixture
def second_database(database_url: str, schema: str) -> Iterator[str]:
    """A database of its own on the same server (the read model's), dropped afterwards."""
    from sqlalchemy import create_engine, make_url  # noqa: PLC0415

    name = f"{schema}_rm"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_projection_from_jetstream_in_a_second_database_equals_the_postgres_one(  # noqa: PLR0917
    relay_store: EventStore,
    database_url: str,
    second_database: str,
    nats_url: str,
    target: tuple[str, str],
    tmp_path: Path,
) -> None:
    """`projections run --source` builds the Ledger in another database from the relayed
    log; it equals the Ledger built from PostgreSQL."""
    import projections  # noqa: PLC0415
    from tests.projection_domain import Ledger  # noqa: PLC0415

    stream, prefix = target
    for i in range(100):
        relay_store.append(f"acc-{i}", [Opened(owner="o")], NO_STREAM)
        relay_store.append(f"acc-{i}", [Deposited(amount=n + 1) for n in range(9)], 1)
    read_store = EventStore.from_url(second_database, schema=relay_store.schema, partitions=8)
    read_store.upgrade()
    env = relay_env(database_url)
    env["TEST_READ_SCHEMA"] = relay_store.schema
    nats_args = [nats_url, "--stream", stream, "--subject-prefix", prefix]
    relay = _start(["run", *nats_args, "--schema", relay_store.schema], env, tmp_path / "relay.log")
    worker_args = ["projections", "run", "tests.projection_domain:Ledger", "--source", *nats_args]
    worker_args += ["--schema", relay_store.schema, "--database-url", second_database]
    with (tmp_path / "worker.log").open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "eventsource", *worker_args],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while sum(r.position for r in projections.status(read_store)) < 1000:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert relay.poll() is None, (tmp_path / "relay.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.05)
        for process in (worker, relay):
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
    finally:
        for process in (worker, relay):
            if process.poll() is None:
                process.kill()
    projections.run(relay_store, [Ledger(relay_store.schema)], stop_when_caught_up=True)
    query = "SELECT stream_id, version, partition, position, amount FROM {}.ledger_applied"
    rows = {}
    for store in (relay_store, read_store):
        with store.engine.connect() as conn:
            rows[store] = sorted(
                tuple(r) for r in conn.exec_driver_sql(query.format(f'"{store.schema}"'))
            )
    read_store.close()
    assert rows[read_store] == rows[relay_store]
    assert len(rows[relay_store]) == 1000


def _status_from_jetstream(
    database_url: str, nats_url: str, target: tuple[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`eventsource projections status --source nats_url ...` with the stream of ``target``."""
    stream, prefix = target
    source = ["--source", nats_url, "--stream", stream, "--subject-prefix", prefix]
    return _cli(
        [sys.executable, "-m", "eventsource", "projections", "status", *source, *args],
        relay_env(database_url),
    )


def test_status_of_a_jetstream_read_model_shows_the_streams_heads_and_lag(
    relay_store: EventStore,
    database_url: str,
    schema: str,
    nats_url: str,
    target: tuple[str, str],
) -> None:
    """With --source, the heads are the relayed log's in JetStream; --check --max-lag judges
    the lag against them."""
    stream, prefix = target
    fill(relay_store, 16, 3)
    relay(relay_store, nats_url, stream, prefix)
    read_store = EventStore.from_url(database_url, schema=f"{schema}_rm", partitions=8)
    read_store.upgrade()
    try:
        run_from_jetstream(read_store, nats_url, stream, prefix)
        for i in range(16):
            relay_store.append(f"acc-{i}", [Deposited(amount=1)])
        relay(relay_store, nats_url, stream, prefix)
        on_read_model = ["--schema", read_store.schema]
        result = _status_from_jetstream(database_url, nats_url, target, "--json", *on_read_model)
        assert result.returncode == 0, describe(result)
        rows = json.loads(result.stdout)
        assert {r["partition"]: r["head"] for r in rows} == relay_store.heads()
        assert all(r["lag"] == r["head"] - r["position"] for r in rows)
        assert sum(r["lag"] for r in rows) == 16
        check = ["--check", "--max-lag", "0", *on_read_model]
        lagging = _status_from_jetstream(database_url, nats_url, target, *check)
        assert lagging.returncode == 1, describe(lagging)
        run_from_jetstream(read_store, nats_url, stream, prefix)
        caught_up = _status_from_jetstream(database_url, nats_url, target, *check)
        assert caught_up.returncode == 0, describe(caught_up)
    finally:
        read_store.close()


def test_status_with_an_unreachable_source_fails_in_one_line(
    relay_store: EventStore, database_url: str, schema: str
) -> None:
    """No NATS server at --source: one line naming it, exit 1."""
    args = ["status", "--source", "nats://127.0.0.1:1", "--schema", relay_store.schema]
    result = _cli(
        [sys.executable, "-m", "eventsource", "projections", *args], relay_env(database_url)
    )
    assert result.returncode == 1, describe(result)
    assert "nats://127.0.0.1:1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, describe(result)


def test_relay_and_jetstream_worker_wait_for_an_unreachable_nats(
    relay_store: EventStore, database_url: str, tmp_path: Path
) -> None:
    """No server at the URL: the relay and a JetStream-sourced worker each log one line naming
    the server, keep retrying with backoff (no exit, no line per retry), and stop cleanly."""
    url = f"nats://127.0.0.1:{free_port()}"
    env = relay_env(database_url)
    relay_store.append("acc-1", [Opened(owner="o")], NO_STREAM)
    relay = _start(["run", url, "--schema", relay_store.schema], env, tmp_path / "relay.log")
    worker_args = ["projections", "run", "tests.projection_domain:Ledger", "--source", url]
    with (tmp_path / "worker.log").open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "eventsource", *worker_args, "--schema", relay_store.schema],
            env={**env, "TEST_READ_SCHEMA": relay_store.schema},
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        for process, log in ((relay, "relay.log"), (worker, "worker.log")):
            while url not in (tmp_path / log).read_text():
                assert process.poll() is None, (tmp_path / log).read_text()
                assert time.monotonic() < deadline, (tmp_path / log).read_text()
                time.sleep(0.05)
        time.sleep(3.0)  # several retries, which log nothing more
        for process in (relay, worker):
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
        for process, log in ((relay, "relay.log"), (worker, "worker.log")):
            assert process.wait(30) == 0, (tmp_path / log).read_text()
    finally:
        for process in (relay, worker):
            if process.poll() is None:
                process.kill()
    for log in ("relay.log", "worker.log"):
        lines = [json.loads(line) for line in (tmp_path / log).read_text().splitlines()]
        about = [line for line in lines if url in str(line.get("error", ""))]
        assert len(about) == 1, lines
        assert about[0]["level"] == "warning"
        assert "\n" not in about[0]["error"]
