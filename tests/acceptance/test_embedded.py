"""With no database URL, the CLI starts the embedded PostgreSQL (pgserver) in a local directory."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._support import cli_env, describe, run_cli


def _processes_using(directory: Path) -> list[str]:
    """Command lines of live processes that name ``directory`` (the embedded server's)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        text = " ".join(a.decode(errors="replace") for a in args)
        if str(directory) in text:
            found.append(text)
    return found


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A short data directory under /tmp (the server's Unix socket path must stay short)."""
    try:
        import pgserver  # noqa: F401, PLC0415 - only to know whether it is installed
    except ImportError:
        pytest.skip("the embedded PostgreSQL (pgserver) is not installed")
    root = Path(tempfile.mkdtemp(prefix="es", dir="/tmp"))
    yield root / "pg"
    shutil.rmtree(root, ignore_errors=True)


def test_without_a_url_the_cli_runs_on_the_embedded_server(embedded_dir: Path) -> None:
    """No EVENTSOURCE_DATABASE_URL: `db upgrade` then `demo` run on pgserver, which then stops."""
    env = cli_env(None, EVENTSOURCE_EMBEDDED_DIR=str(embedded_dir))

    upgrade = run_cli(["db", "upgrade"], env, timeout=120)
    assert upgrade.returncode == 0, describe(upgrade)
    assert "16 partitions" in upgrade.stdout
    assert "Traceback" not in upgrade.stderr
    assert (embedded_dir / "PG_VERSION").is_file()

    demo = run_cli(["demo"], env, timeout=120)
    assert demo.returncode == 0, describe(demo)
    assert "refused by the business rule" in demo.stdout
    assert "refused by optimistic concurrency" in demo.stdout
    assert ".receipts" in demo.stdout
    assert "exit codes [0, 0]" in demo.stdout
    assert "Traceback" not in demo.stderr

    # The data outlives the processes: a third one finds the demo's eight events.
    status = run_cli(["db", "status", "--json"], env, timeout=120)
    assert status.returncode == 0, describe(status)
    info = json.loads(status.stdout)
    assert info["up_to_date"] is True
    assert info["events"] == 8

    # The server stops with the last process that used it.
    deadline = time.monotonic() + 15
    while _processes_using(embedded_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_using(embedded_dir) == []


def test_a_data_directory_too_long_for_a_socket_path_works(embedded_dir: Path) -> None:
    """A data directory whose socket path would pass the ~107-byte limit of Unix sockets (a
    deep home directory, pytest's temporary ones): the server listens elsewhere, and the CLI
    finds it there."""
    deep = embedded_dir.parent / ("d" * 60) / ("e" * 40) / "pgdata"
    assert len(str(deep / ".s.PGSQL.5432")) > 107
    env = cli_env(None, EVENTSOURCE_EMBEDDED_DIR=str(deep))

    upgrade = run_cli(["db", "upgrade"], env, timeout=120)
    assert upgrade.returncode == 0, describe(upgrade)
    assert (deep / "PG_VERSION").is_file()
    status = run_cli(["db", "status", "--json"], env, timeout=120)
    assert status.returncode == 0, describe(status)
    assert json.loads(status.stdout)["up_to_date"] is True
