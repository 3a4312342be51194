"""The console script's configuration: version, settings errors, masked secrets, logging."""

from __future__ import annotations

import pytest

import eventsource

from ._support import cli_env, describe, run_cli, scalar


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
