"""Health for schedulers and the operations server, through the `eventsource` CLI:
``projections status --check``, ``commands list --check`` and ``ops serve``."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request

import pytest

import projections
from eventsource import NO_STREAM, CommandQueue, EventStore
from tests.domain import Opened
from tests.integration._ops_support import FAST, Fragile, Notify, dead_command, make_trouble

from ._support import cli_env, describe, eventsource_command, run_cli

pytestmark = pytest.mark.timeout(120)


def check(database_url: str, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``eventsource ARGS --schema SCHEMA``."""
    return run_cli([*args, "--schema", schema], cli_env(database_url))


def test_a_healthy_store_passes_both_checks(
    database_url: str, schema: str, store: EventStore
) -> None:
    """No stopped partition, no lag past the threshold, no dead letters: exit 0."""
    store.append("acc-1", [Opened(owner="ann")], expected_version=NO_STREAM)
    projections.run(store, [Fragile()], stop_when_caught_up=True, **FAST)
    for args in (
        ["projections", "status", "--check"],
        ["projections", "status", "--check", "--max-lag", "0"],
        ["commands", "list", "--check", "--max-age", "60"],
        ["commands", "list", "--check", "--json"],
    ):
        result = check(database_url, schema, *args)
        assert result.returncode == 0, describe(result)
        assert "unhealthy" not in result.stderr


def test_a_stopped_partition_fails_the_projections_check(
    database_url: str, schema: str, store: EventStore
) -> None:
    """Exit 1, naming the projection, the partition and the error."""
    trouble = make_trouble(store)
    result = check(database_url, schema, "projections", "status", "--check")
    assert result.returncode == 1, describe(result)
    assert f"{Fragile.name} partition {trouble.partition}: stopped on an error" in result.stderr
    assert "cannot open an account" in result.stderr
    plain = check(database_url, schema, "projections", "status")
    assert plain.returncode == 0, describe(plain)  # without --check: a report, not a check


def test_lag_past_the_threshold_fails_the_projections_check(
    database_url: str, schema: str, store: EventStore
) -> None:
    """A partition behind by more than --max-lag events: exit 1, saying by how much."""
    projections.run(store, [Fragile()], stop_when_caught_up=True, **FAST)
    for i in range(3):
        store.append(
            f"late-{i}", [Opened(owner="x")], expected_version=NO_STREAM, partition_key="k"
        )
    lagging = check(database_url, schema, "projections", "status", "--check", "--max-lag", "2")
    assert lagging.returncode == 1, describe(lagging)
    assert "lags 3 events (more than 2)" in lagging.stderr
    fine = check(database_url, schema, "projections", "status", "--check", "--max-lag", "3")
    assert fine.returncode == 0, describe(fine)


def test_dead_letters_fail_the_commands_check(
    database_url: str, schema: str, store: EventStore
) -> None:
    """A dead command: exit 1, naming its queue."""
    dead_command(store)
    result = check(database_url, schema, "commands", "list", "--check")
    assert result.returncode == 1, describe(result)
    assert "queue mail: 1 dead command(s)" in result.stderr


def test_an_old_due_command_fails_the_commands_check(
    database_url: str, schema: str, store: EventStore
) -> None:
    """A due command waiting longer than --max-age fails; a delayed one does not count."""
    queue = CommandQueue(store)
    queue.enqueue(Notify(text="later"), queue="mail", delay=3600)
    queue.enqueue(Notify(text="now"), queue="mail")
    time.sleep(1.2)
    old = check(database_url, schema, "commands", "list", "--check", "--max-age", "1")
    assert old.returncode == 1, describe(old)
    assert "queue mail: the oldest due command has waited" in old.stderr
    fine = check(database_url, schema, "commands", "list", "--check", "--max-age", "1m")
    assert fine.returncode == 0, describe(fine)


@pytest.mark.parametrize(
    "args",
    [
        ["projections", "status", "--max-lag", "3"],
        ["projections", "status", "--check", "--max-lag", "-1"],
        ["commands", "list", "--max-age", "10"],
        ["commands", "list", "--check", "--max-age", "soon"],
    ],
)
def test_bad_check_options_exit_2(database_url: str, schema: str, args: list[str]) -> None:
    """A threshold without --check, or out of range: exit 2 with one line."""
    result = check(database_url, schema, *args)
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def test_ops_serve_serves_the_page_on_localhost(
    database_url: str, schema: str, store: EventStore
) -> None:
    """`ops serve` binds 127.0.0.1 by default, serves the page, /metrics, /healthz and
    /readyz, and stops on SIGTERM."""
    port = _free_port()
    process = subprocess.Popen(
        [*eventsource_command(), "ops", "serve", "--port", str(port), "--schema", schema],
        env=cli_env(database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                assert _get(f"{base}/healthz") == (200, "ok")
                break
            except OSError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert _get(f"{base}/readyz")[0] == 200
        status, page = _get(f"{base}/")
        assert status == 200 and "read-only" in page
        assert "eventsource_events_appended_total" in _get(f"{base}/metrics")[1]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in out
    assert process.returncode == 0, err
