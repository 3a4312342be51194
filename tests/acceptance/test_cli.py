"""The `eventsource` console script run as a user runs it: exit codes, output, the database."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from eventsource import CommandQueue, EventStore
from tests.domain import Deposited

from ._support import cli_env, describe, eventsource_command, run_cli, scalar

HOSTILE_SCHEMA = 'x"; DROP SCHEMA public; --'


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The process's stderr, checked to be a single `error:` line with no traceback."""
    assert "Traceback" not in result.stderr, describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith("error: "), describe(result)
    return lines[0]


def test_upgrade_creates_the_schema_and_is_idempotent(database_url: str, schema: str) -> None:
    """`db upgrade` exits 0 twice; the partition count is the one given when it was created
    (given again, or left out)."""
    env = cli_env(database_url)
    first = run_cli(["db", "upgrade", "--schema", schema, "--partitions", "3"], env)
    assert first.returncode == 0, describe(first)
    assert schema in first.stdout
    assert "3 partitions" in first.stdout

    again = run_cli(["db", "upgrade", "--schema", schema, "--partitions", "3"], env)
    assert again.returncode == 0, describe(again)
    assert "3 partitions" in again.stdout
    plain = run_cli(["db", "upgrade", "--schema", schema], env)
    assert plain.returncode == 0, describe(plain)
    assert "3 partitions" in plain.stdout
    assert "Traceback" not in first.stderr + again.stderr + plain.stderr

    assert scalar(database_url, f"SELECT count(*) FROM {schema}.partitions") == 3
    assert scalar(database_url, f"SELECT count(*) FROM {schema}.eventsource_version") == 1


def test_status_reports_revision_partitions_and_events(database_url: str, schema: str) -> None:
    """`db status` prints the revision and partitions; `--json` is parseable and counts events."""
    env = cli_env(database_url)
    upgrade = run_cli(["db", "upgrade", "--schema", schema, "--partitions", "5"], env)
    assert upgrade.returncode == 0, describe(upgrade)

    as_json = run_cli(["db", "status", "--schema", schema, "--json"], env)
    assert as_json.returncode == 0, describe(as_json)
    info = json.loads(as_json.stdout)
    assert info["schema"] == schema
    assert info["revision"] is not None
    assert info["revision"] == info["head"]
    assert info["up_to_date"] is True
    assert info["partitions"] == 5
    assert info["events"] == 0

    text = run_cli(["db", "status", "--schema", schema], env)
    assert text.returncode == 0, describe(text)
    assert re.search(rf"revision: {re.escape(info['revision'])}\b", text.stdout), text.stdout
    assert re.search(r"partitions: 5\b", text.stdout), text.stdout

    with EventStore.from_url(database_url, schema=schema) as store:
        store.append("s-1", [Deposited(amount=1), Deposited(amount=2)])
        store.append("s-2", [Deposited(amount=3)])
    after = run_cli(["db", "status", "--schema", schema, "--json"], env)
    assert json.loads(after.stdout)["events"] == 3


def test_status_of_a_missing_schema_exits_1_with_a_hint(database_url: str, schema: str) -> None:
    """`db status` on a schema never created exits 1, says to run `eventsource db upgrade`."""
    result = run_cli(["db", "status", "--schema", schema], cli_env(database_url))
    assert result.returncode == 1, describe(result)
    assert "eventsource db upgrade" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # Looking does not create anything.
    assert (
        scalar(database_url, f"SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'") == 0
    )


def test_status_json_of_a_missing_schema_also_exits_1(database_url: str, schema: str) -> None:
    """`db status --json` exits 1 too when the schema is not up to date (same exit, any format)."""
    result = run_cli(["db", "status", "--schema", schema, "--json"], cli_env(database_url))
    assert json.loads(result.stdout)["up_to_date"] is False
    assert result.returncode == 1, describe(result)


def test_demo_runs_the_bank_end_to_end(database_url: str, schema: str) -> None:
    """`demo` exits 0, prints accounts, the refused overdraft and race; the log holds its events."""
    result = run_cli(["demo", "--schema", schema], cli_env(database_url))
    assert result.returncode == 0, describe(result)
    out = result.stdout
    assert "Traceback" not in result.stderr
    assert "refused by the business rule" in out
    assert "refused by optimistic concurrency" in out
    assert "nothing was written" in out
    assert "accounts" in out
    opened = re.search(r"opened (acc-ann-\w+) and (acc-bob-\w+)", out)
    assert opened is not None, out
    ann, bob = opened.groups()
    assert re.search(rf"{ann}\s*│\s*Ann\s*│\s*60\.00\s*│\s*4\s*│", out), out
    assert re.search(rf"{bob}\s*│\s*Bob\s*│\s*1550\.00\s*│\s*4\s*│", out), out
    # The command worker process ran a receipt per account of the transfer; the reactor
    # enqueued one review for the large deposit.
    assert re.search(rf"{ann}\s*│\s*\w{{8}}\s*│\s*60\.00\s*│\s*1\s*│", out), out
    assert re.search(rf"{bob}\s*│\s*\w{{8}}\s*│\s*1550\.00\s*│\s*1\s*│", out), out
    assert re.search(rf"{bob}\s*│\s*1500\.00\s*│", out), out
    assert "exit codes [0, 0]" in out

    with EventStore.from_url(database_url, schema=schema) as store:
        assert store.stream_version(ann) == 4
        assert store.stream_version(bob) == 4
        assert sum(store.heads().values()) == 8
        assert CommandQueue(store).list(("pending", "running", "dead")) == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["db", "upgrade", "--bogus"], "--bogus"),
        (["db", "upgrade", "--partitions", "0"], "--partitions"),
        (["db", "status", "--schema", HOSTILE_SCHEMA], "invalid schema name"),
        (["db", "upgrade", "--schema", HOSTILE_SCHEMA], "invalid schema name"),
        (["demo", "--database-url", "mysql://x/y"], "mysql"),
        (["db", "status", "--database-url", "mysql://x/y"], "mysql"),
        (["db", "upgrade", "--database-url", "not a url"], "invalid database URL"),
        (["no-such-command"], "no-such-command"),
    ],
    ids=[
        "unknown-option",
        "zero-partitions",
        "hostile-schema-status",
        "hostile-schema-upgrade",
        "mysql-url-demo",
        "mysql-url-status",
        "unparseable-url",
        "unknown-command",
    ],
)
def test_bad_usage_exits_2_with_a_short_message(
    database_url: str, args: list[str], named: str
) -> None:
    """Bad usage exits 2 with a usage or `error:` message naming the problem, no traceback."""
    result = run_cli(args, cli_env(database_url))
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    assert result.stdout == "", describe(result)
    assert named in result.stderr, describe(result)
    if result.stderr.startswith("error:"):
        _one_line_error(result)
    else:  # click's usage error: the usage line, then the problem
        assert result.stderr.startswith("Usage: eventsource"), describe(result)


def test_hostile_schema_name_touches_nothing(database_url: str) -> None:
    """A schema name carrying SQL is refused before any statement runs: public survives."""
    result = run_cli(["db", "upgrade"], cli_env(database_url, EVENTSOURCE_SCHEMA=HOSTILE_SCHEMA))
    assert result.returncode == 2, describe(result)
    assert "invalid schema name" in _one_line_error(result)
    assert scalar(database_url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'public'") == 1
    assert (
        scalar(database_url, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '%DROP%'") == 0
    )


@pytest.mark.parametrize(
    "args", [["db", "status"], ["db", "upgrade"], ["demo"]], ids=["status", "upgrade", "demo"]
)
def test_unreachable_database_exits_1_without_leaking_the_password(args: list[str]) -> None:
    """An unreachable server: exit 1, one line naming host and database, the password hidden."""
    env = cli_env(None)
    result = run_cli([*args, "--database-url", "postgresql://u:secret@127.0.0.1:1/nodb"], env)
    assert result.returncode == 1, describe(result)
    line = _one_line_error(result)
    assert "127.0.0.1" in line
    assert "nodb" in line
    assert "secret" not in result.stdout + result.stderr


def test_concurrent_upgrades_of_a_fresh_schema_all_succeed(database_url: str, schema: str) -> None:
    """5 `db upgrade` processes at once on one new schema: all exit 0, one schema results."""
    env = cli_env(database_url)
    command = [*eventsource_command(), "db", "upgrade", "--schema", schema, "--partitions", "6"]
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(5)
    ]
    outcomes = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=120)
            outcomes.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for code, stdout, stderr in outcomes:
        assert code == 0, f"exit {code}\n{stdout}\n{stderr}"
        assert "6 partitions" in stdout
    assert scalar(database_url, f"SELECT count(*) FROM {schema}.partitions") == 6
    assert scalar(database_url, f"SELECT count(*) FROM {schema}.eventsource_version") == 1
    assert scalar(database_url, f"SELECT value FROM {schema}.meta WHERE key = 'partitions'") == "6"
