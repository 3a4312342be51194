"""The console script's configuration: version, settings errors, masked secrets, logging."""

from __future__ import annotations

import eventsource

from ._support import cli_env, describe, run_cli


def test_version_option_prints_the_package_version() -> None:
    """`eventsource --version` prints eventsource.__version__ and exits 0 without a database."""
    result = run_cli(["--version"], cli_env(None))
    assert result.returncode == 0, describe(result)
    assert result.stdout.strip() == f"eventsource {eventsource.__version__}"
