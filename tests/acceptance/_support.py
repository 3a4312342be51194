"""Helpers for the acceptance tests: run the `eventsource` console script and helper processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from sqlalchemy import create_engine, text

REPO_ROOT = Path(__file__).resolve().parents[2]


def cli_env(database_url: str | None, **extra: str) -> dict[str, str]:
    """The environment for a CLI process: ours without EVENTSOURCE_*, plus what the test sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSOURCE_")}
    env["COLUMNS"] = "120"  # rich wraps to the terminal width; make it the same everywhere
    env.pop("LINES", None)
    if database_url is not None:
        env["EVENTSOURCE_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def eventsource_command() -> list[str]:
    """The installed `eventsource` console script."""
    path = shutil.which("eventsource")
    assert path is not None, "the `eventsource` console script is not on PATH"
    return [path]


def run_cli(
    args: Sequence[str], env: Mapping[str, str], *, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `eventsource ARGS` to completion and capture its output."""
    return subprocess.run(
        [*eventsource_command(), *args],
        env=dict(env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def helper_command(module: str, *args: str) -> list[str]:
    """A command line running one of the helper modules of this package."""
    return [sys.executable, "-m", f"tests.acceptance.{module}", *args]


def helper_env() -> dict[str, str]:
    """The environment for a helper process: it imports `tests.*` from the repository root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def scalar(database_url: str, sql: str) -> object:
    """One value from the database, on a connection of its own."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A process's exit code and output, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
