"""The console script's configuration: version, settings errors, masked secrets, logging."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

import eventsource
from eventsource import CommandQueue, EventStore
from eventsource.commands import check_queues_served
from tests.acceptance._command_support import Work

from ._support import cli_env, describe, run_cli, scalar

WORKER_MODULE = "tests.acceptance._command_support"


def test_version_option_prints_the_package_version() -> None:
    """`eventsource --version` prints eventsource.__version__ and exits 0 without a database."""
    result = run_cli(["--version"], cli_env(None))
    assert result.returncode == 0, describe(result)
    assert result.stdout.strip() == f"eventsource {eventsource.__version__}"


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        (["--partitions", "0"], {}, "error: --partitions: must be from 1 to 4096, got 0"),
        ([], {"EVENTSOURCE_PARTITIONS": "0"}, "EVENTSOURCE_PARTITIONS: must be from 1 to 4096"),
        ([], {"EVENTSOURCE_POOL_SIZE": "0"}, "EVENTSOURCE_POOL_SIZE: must be from 1 to 1000"),
    ],
    ids=["option", "partitions-variable", "pool-size-variable"],
)
def test_a_bad_partition_count_names_its_origin_and_range(
    database_url: str, schema: str, args: list[str], extra: dict[str, str], message: str
) -> None:
    """`db upgrade` with a partition count out of range names the flag or variable, exits 2,
    and creates nothing."""
    env = cli_env(database_url, **extra)
    result = run_cli(["db", "upgrade", "--schema", schema, *args], env)
    assert result.returncode == 2, describe(result)
    assert message in result.stderr, describe(result)
    assert len(result.stderr.strip().splitlines()) == 1, describe(result)
    exists = f"SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"
    assert scalar(database_url, exists) == 0


def test_debug_log_and_output_mask_the_password(database_url: str, schema: str) -> None:
    """With debug JSON logs, neither the log lines nor the output show the URL's password."""
    url = make_url(database_url).set(password="s3cr3t").render_as_string(hide_password=False)
    env = cli_env(url, EVENTSOURCE_LOG_LEVEL="debug", EVENTSOURCE_LOG_FORMAT="json")
    result = run_cli(["db", "upgrade", "--schema", schema], env)
    assert result.returncode == 0, describe(result)
    assert "s3cr3t" not in result.stdout + result.stderr
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    opened = [record for record in logged if record["event"] == "store opened"]
    assert opened, describe(result)
    assert ":***@" in opened[0]["url"]


def test_worker_refuses_a_queue_that_nothing_serves(database_url: str, schema: str) -> None:
    """`worker run --queue nosuchqueue` exits 2 naming the queues that the handlers serve."""
    env = cli_env(database_url, EVENTSOURCE_SCHEMA=schema)
    assert run_cli(["db", "upgrade"], env).returncode == 0
    result = run_cli(["worker", "run", WORKER_MODULE, "--queue", "nosuchqueue"], env)
    assert result.returncode == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert "no loaded handler serves queue 'nosuchqueue'" in lines[0]
    assert "'default'" in lines[0]


def test_a_queue_holding_commands_is_served(database_url: str, schema: str) -> None:
    """A queue that commands reach through enqueue(queue=...) is accepted once it holds one,
    and so is an empty queue beside a served one; only unserved, unused queues are refused."""
    with EventStore.from_url(database_url, schema=schema) as store:
        store.upgrade()
        with pytest.raises(ValueError, match=r"serves queues 'urgent', 'typo': .*'default'"):
            check_queues_served(store, ["urgent", "typo"])
        check_queues_served(store, ["default", "private-1"])
        CommandQueue(store).enqueue(Work(n=1), queue="urgent")
        check_queues_served(store, ["urgent"])


@pytest.mark.parametrize(
    ("args", "extra", "given"),
    [
        (["--partitions", "8"], {}, "--partitions 8"),
        ([], {"EVENTSOURCE_PARTITIONS": "8"}, "EVENTSOURCE_PARTITIONS=8"),
    ],
    ids=["option", "variable"],
)
def test_upgrade_refuses_another_partition_count(
    database_url: str, schema: str, args: list[str], extra: dict[str, str], given: str
) -> None:
    """`db upgrade` with a partition count other than the schema's exits 2 saying that the
    count is fixed at creation; the schema keeps its partitions."""
    env = cli_env(database_url, EVENTSOURCE_SCHEMA=schema)
    assert run_cli(["db", "upgrade", "--partitions", "4"], env).returncode == 0
    result = run_cli(["db", "upgrade", *args], {**env, **extra})
    assert result.returncode == 2, describe(result)
    assert result.stderr.strip() == (
        f"error: schema {schema} has 4 partitions, fixed when it was created: {given} cannot"
        " change it (leave it out to upgrade the schema as it is)"
    ), describe(result)
    assert scalar(database_url, f"SELECT count(*) FROM {schema}.partitions") == 4


def test_no_database_url_error_keeps_the_extra_in_brackets(tmp_path: Path) -> None:
    """Without a URL and without the embedded server installed, the one-line error shows
    `pip install 'eventsource[embedded]'` verbatim (rich markup does not swallow it)."""
    script = (
        "import sys; sys.modules['pgserver'] = None\n"  # as if the extra were not installed
        "from eventsource.cli import main\n"
        "main(['db', 'status'])\n"
    )
    env = cli_env(None, EVENTSOURCE_EMBEDDED_DIR=str(tmp_path / "pgdata"))
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, describe(result)
    assert result.stderr.strip().startswith("error: no database URL is set"), describe(result)
    assert "pip install 'eventsource[embedded]'" in result.stderr, describe(result)
