"""The `eventsource` command with bad input, run as a user runs it: every bad option, argument
or EVENTSOURCE_* variable exits 2 with one line naming it, and nothing is written."""

from __future__ import annotations

import subprocess

import pytest
from sqlalchemy import text

from eventsource import CommandQueue, EventStore
from eventsource.db import quote_schema
from tests.acceptance._command_support import Work

from ._support import cli_env, describe, run_cli, scalar

pytestmark = pytest.mark.timeout(300)

MODULE = "tests.acceptance._command_support"
BIG = str(2**70)  # 1180591620717411303424: past every integer column


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The process's stderr, checked to be a single `error:` line with no traceback."""
    assert "Traceback" not in result.stderr, describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith("error: "), describe(result)
    return lines[0]


def bad_usage(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI, check it exited 2 with one `error:` line and no output; the line."""
    result = run_cli(args, env)
    assert result.returncode == 2, describe(result)
    assert result.stdout == "", describe(result)
    return one_line_error(result)


@pytest.fixture
def store(database_url: str, schema: str) -> EventStore:
    """An upgraded schema holding one dead and one pending command."""
    with EventStore.from_url(database_url, schema=schema, partitions=4) as s:
        s.upgrade()
        queue = CommandQueue(s)
        queue.enqueue(Work(n=1))
        dead = queue.enqueue(Work(n=2)).id
        with s.engine.begin() as conn:
            conn.execute(
                text(f"UPDATE {quote_schema(schema)}.commands SET status = 'dead' WHERE id = :i"),
                {"i": dead},
            )
        return s


def command_states(database_url: str, schema: str) -> object:
    """The stored commands' (id, status, attempts, max_attempts), to show nothing changed."""
    return scalar(
        database_url,
        "SELECT coalesce(array_agg(ARRAY[id::text, status, attempts::text, max_attempts::text]"
        f" ORDER BY id), '{{}}') FROM {quote_schema(schema)}.commands",
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["commands", "list", "--limit", BIG], "'--limit'"),
        (["commands", "list", "--limit", "0"], "'--limit'"),
        (["commands", "dead", "--queue", "q\udcff"], "--queue is not valid UTF-8"),
        (["commands", "list", "--queue", "q\udcff"], "--queue is not valid UTF-8"),
        (["commands", "purge", "--older-than", "99999999999w", "--yes"], "--older-than"),
        (["commands", "purge", "--queue", "\udcff", "--yes"], "--queue is not valid UTF-8"),
        (["commands", "retry", BIG], "command_id"),
        (["commands", "retry", "1", "--attempts", "1000"], "'--attempts'"),
        (["projections", "retry", "p", "--partition", BIG], "--partition"),
        (["projections", "skip", "p", "--partition", BIG], "--partition"),
        (["projections", "retry", "p\udcff", "--partition", "0"], "NAME"),
        (["projections", "run", "x:Y", "--worker-id", "w\udcff"], "--worker-id"),
        (["projections", "run", "x\udcff:Y"], "MODULE:CLASS"),
        (["worker", "run", MODULE, "--worker-id", "w\udcff"], "--worker-id"),
        (["worker", "run", MODULE, "--worker-id", "w" * 201], "--worker-id"),
        (["worker", "run", MODULE, "--poll-interval", "1e10"], "'--poll-interval'"),
        (["worker", "run", MODULE, "--poll-interval", "nan"], "--poll-interval"),
        (["worker", "run", MODULE, "--lease", "inf"], "--lease"),
        (["worker", "run", MODULE, "--grace", "1e300"], "--grace"),
        (["worker", "run", MODULE, "--concurrency", "1000"], "'--concurrency'"),
        (["worker", "run", MODULE, "--queue", "q\udcff"], "--queue is not valid UTF-8"),
        (["worker", "run", "mod\udcff"], "MODULE"),
        (["db", "upgrade", "--partitions", BIG], "--partitions: must be from 1 to 4096"),
    ],
    ids=[
        "list-limit-2**70",
        "list-limit-0",
        "dead-queue-surrogate",
        "list-queue-surrogate",
        "purge-older-than",
        "purge-queue-surrogate",
        "retry-id-2**70",
        "retry-attempts",
        "projection-retry-partition",
        "projection-skip-partition",
        "projection-name-surrogate",
        "projections-run-worker-id",
        "projections-run-target",
        "worker-id-surrogate",
        "worker-id-long",
        "poll-interval-1e10",
        "poll-interval-nan",
        "lease-inf",
        "grace-1e300",
        "concurrency",
        "worker-queue-surrogate",
        "worker-module-surrogate",
        "partitions-2**70",
    ],
)
def test_bad_options_exit_2_naming_them_and_write_nothing(
    store: EventStore, database_url: str, schema: str, args: list[str], named: str
) -> None:
    """A bad option or argument exits 2 with one line naming it; the stored commands and
    checkpoints are as they were."""
    env = cli_env(database_url, EVENTSOURCE_SCHEMA=schema)
    before = command_states(database_url, schema)
    line = bad_usage(args, env)
    assert named.lower() in line.lower(), line
    assert "database error" not in line
    assert command_states(database_url, schema) == before
    checkpoints = f"SELECT count(*) FROM {quote_schema(schema)}.projection_checkpoints"
    assert scalar(database_url, checkpoints) == 0


@pytest.mark.parametrize(
    ("setting", "args", "named"),
    [
        ("EVENTSOURCE_POOL_SIZE=0", ["commands", "list"], "EVENTSOURCE_POOL_SIZE: must be"),
        ("EVENTSOURCE_POOL_SIZE=ten", ["db", "status"], "EVENTSOURCE_POOL_SIZE: must be"),
        ("EVENTSOURCE_COMMAND_LEASE=nan", ["worker", "run", MODULE], "EVENTSOURCE_COMMAND_LEASE"),
        ("EVENTSOURCE_LOG_LEVEL=loud", ["db", "status"], "EVENTSOURCE_LOG_LEVEL: must be"),
        ("EVENTSOURCE_SCHEMA=a-b", ["db", "upgrade"], "EVENTSOURCE_SCHEMA: invalid schema"),
        ("EVENTSOURCE_PARTITIONS=0", ["db", "upgrade"], "EVENTSOURCE_PARTITIONS"),
        (f"EVENTSOURCE_PARTITIONS={BIG}", ["db", "upgrade"], "EVENTSOURCE_PARTITIONS"),
        (
            "EVENTSOURCE_DATABASE_URL=postgresql://u:s3cr3t@127.0.0.1:abc/db",
            ["db", "upgrade"],
            "EVENTSOURCE_DATABASE_URL: the port of the database URL must be a number",
        ),
    ],
    ids=[
        "pool-size-0",
        "pool-size-text",
        "command-lease-nan",
        "log-level",
        "schema",
        "partitions-0",
        "partitions-2**70",
        "url-port",
    ],
)
def test_bad_environment_variables_exit_2_naming_them(
    database_url: str, schema: str, setting: str, args: list[str], named: str
) -> None:
    """A bad EVENTSOURCE_* variable exits 2 with one line naming the variable; no schema is
    created and no password is shown."""
    variable, _, value = setting.partition("=")
    env = {**cli_env(database_url, EVENTSOURCE_SCHEMA=schema), variable: value}
    line = bad_usage(args, env)
    assert named in line, line
    assert "s3cr3t" not in line
    assert "int()" not in line
    exists = f"SELECT count(*) FROM pg_namespace WHERE nspname IN ('{schema}', 'a-b')"
    assert scalar(database_url, exists) == 0


def test_a_bad_database_url_option_is_named_and_its_password_hidden(database_url: str) -> None:
    """--database-url with a non-numeric port exits 2 naming the option and the port."""
    line = bad_usage(
        ["db", "status", "--database-url", "postgresql://u:s3cr3t@127.0.0.1:54x2/db"],
        cli_env(database_url),
    )
    assert line.startswith("error: --database-url: the port of the database URL"), line
    assert "'54x2'" in line
    assert "s3cr3t" not in line


def test_a_rejected_purge_or_retry_leaves_dead_commands_alone(
    store: EventStore, database_url: str, schema: str
) -> None:
    """The dead command is still there after a purge and a retry that were refused."""
    env = cli_env(database_url, EVENTSOURCE_SCHEMA=schema)
    before = command_states(database_url, schema)
    assert "dead" in str(before)
    bad_usage(["commands", "purge", "--older-than", "99999999999w", "--yes"], env)
    bad_usage(["commands", "retry", str(2**63)], env)
    assert command_states(database_url, schema) == before
