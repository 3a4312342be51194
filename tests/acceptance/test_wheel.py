"""The built wheel, installed in a fresh virtual environment, inside an application of its own.

The wheel is built once from a copy of the sources and installed with ``--no-deps`` into a venv
that sees this interpreter's site-packages (for the dependencies). Each application directory
holds its own ``alembic init migrations``, with and without a ``migrations/__init__.py``: the
framework must still find its own migrations and its example, by the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from ._support import REPO_ROOT, describe, scalar

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "README.md", "eventsource", "projections", "migrations", "examples")


def _run(
    args: list[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output."""
    return subprocess.run(
        args,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _copy_sources(to: Path) -> Path:
    """A copy of what the distribution is built from (builds leave the checkout clean)."""
    to.mkdir(exist_ok=True)
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, to / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, to / name)
    return to


def _fresh_venv(root: Path) -> str:
    """A new venv that sees this interpreter's site-packages (the dependencies); its python."""
    created = _run([sys.executable, "-m", "venv", "--system-site-packages", str(root)], root.parent)
    assert created.returncode == 0, describe(created)
    return str(root / "bin" / "python")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the repository's sources."""
    source = _copy_sources(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        source,
    )
    assert built.returncode == 0, describe(built)
    (found,) = out.glob("*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; the dependencies come from this interpreter."""
    root = tmp_path_factory.mktemp("venv")
    python = _fresh_venv(root)
    installed = _run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], root)
    assert installed.returncode == 0, describe(installed)
    return root


def _app_env(database_url: str) -> dict[str, str]:
    """The environment of an application: nothing of this checkout on the path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EVENTSOURCE_") and k not in ("PYTHONPATH", "PYTHONSAFEPATH")
    }
    env["EVENTSOURCE_DATABASE_URL"] = database_url
    env["COLUMNS"] = "120"
    return env


@pytest.fixture(params=["namespace", "package"])
def app(request: pytest.FixtureRequest, venv: Path, tmp_path: Path) -> Path:
    """An application directory with its own `alembic init migrations` (a package or not)."""
    made = _run([str(venv / "bin" / "python"), "-m", "alembic", "init", "migrations"], tmp_path)
    assert made.returncode == 0, describe(made)
    if request.param == "package":
        (tmp_path / "migrations" / "__init__.py").write_text("")
    return tmp_path


def test_the_wheel_installs_only_the_framework_packages(wheel: Path) -> None:
    """The wheel's RECORD names no top-level package but eventsource and projections."""
    with zipfile.ZipFile(wheel) as zf:
        (record,) = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        files = [line.split(",")[0] for line in zf.read(record).decode().splitlines() if line]
    tops = {name.split("/")[0] for name in files if ".dist-info/" not in name}
    assert tops == {"eventsource", "projections"}
    assert "eventsource/_migrations/env.py" in files
    assert "eventsource/_migrations/script.py.mako" in files
    assert "eventsource/_migrations/versions/0001_initial.py" in files
    assert "eventsource/_examples/bank/demo.py" in files
    assert "eventsource/db/schema.sql" in files
    assert "eventsource/runtime/membership.sql" in files
    assert wheel.name.startswith("eventsource_pg-")


UPGRADE = """
import eventsource, sys
from eventsource import EventStore
with EventStore.from_url(sys.argv[1], schema=sys.argv[2]) as store:
    store.upgrade()
    print(eventsource.__file__)
"""


def test_upgrade_uses_the_framework_migrations_beside_an_apps_own(
    app: Path, venv: Path, database_url: str, schema: str
) -> None:
    """`store.upgrade()` in an app with its own alembic `migrations` creates the schema."""
    python = str(venv / "bin" / "python")
    result = _run([python, "-c", UPGRADE, database_url, schema], app, _app_env(database_url))
    assert result.returncode == 0, describe(result)
    assert Path(result.stdout.splitlines()[0]).is_relative_to(venv), result.stdout
    status = _run(
        [str(venv / "bin" / "eventsource"), "db", "status", "--schema", schema, "--json"],
        app,
        _app_env(database_url),
    )
    assert status.returncode == 0, describe(status)
    assert '"up_to_date": true' in status.stdout


def test_the_demo_runs_from_the_wheel_inside_an_app(
    app: Path, venv: Path, database_url: str, schema: str
) -> None:
    """`eventsource demo` runs the bank example installed inside the package, workers and all."""
    result = _run(
        [str(venv / "bin" / "eventsource"), "demo", "--schema", schema],
        app,
        _app_env(database_url),
    )
    assert result.returncode == 0, describe(result)
    out = result.stdout
    assert "exit codes [0, 0]" in out
    # Messages give amounts in units, as the tables do (1550.00 in Bob's rows, not 155000).
    assert "deposited 100.00 to Ann, 20.00 and 1500.00 to Bob" in out
    assert "has 1550.00, cannot pay out 10000.00" in out
    assert "Traceback" not in result.stderr


COMPAT = ("--config-settings", "editable_mode=compat")  # as README's set-up line installs
USER_CODE = """
from eventsource import EventStore
import projections


def partitions(store: EventStore) -> int:
    return store.partitions


reveal_type(projections.wait_for)
"""


def test_mypy_resolves_the_readmes_editable_install(tmp_path: Path) -> None:
    """After README's editable set-up (compat mode), mypy finds the packages for user code."""
    source = _copy_sources(tmp_path / "checkout")
    python = _fresh_venv(tmp_path / "venv")
    installed = _run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(source), *COMPAT],
        tmp_path,
    )
    assert installed.returncode == 0, describe(installed)
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(USER_CODE)
    env = _app_env("postgresql://unused")
    checked = _run(
        [python, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull, "app.py"],
        app,
        env,
    )
    assert checked.returncode == 0, describe(checked)
    assert "eventsource.store._sync.EventStore" in checked.stdout, checked.stdout


def test_the_checkouts_example_module_prints_help(database_url: str, schema: str) -> None:
    """`python -m examples.bank --help` in a checkout prints the demo's options, runs nothing."""
    env = _app_env(database_url)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["EVENTSOURCE_SCHEMA"] = schema
    result = _run([sys.executable, "-m", "examples.bank", "--help"], REPO_ROOT, env)
    assert result.returncode == 0, describe(result)
    assert "Usage:" in result.stdout
    assert "--schema" in result.stdout
    assert "Bank demo" not in result.stdout


def test_the_checkouts_demo_refuses_an_apps_own_examples_package(
    tmp_path: Path, database_url: str, schema: str
) -> None:
    """From a checkout, `demo` beside an app's own `examples` fails in one line, writes nothing."""
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "__init__.py").write_text("")
    env = _app_env(database_url)
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = _run([sys.executable, "-m", "eventsource", "demo", "--schema", schema], tmp_path, env)
    assert result.returncode == 1, describe(result)
    assert "the bank example is not installed" in result.stderr
    created = f"SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"
    assert scalar(database_url, created) == 0


def test_mypy_strict_passes_on_the_shop_against_the_wheel(app: Path, venv: Path) -> None:
    """The shop example, copied into an app with its own migrations, passes `mypy --strict`
    against the installed wheel's packages (their py.typed and annotations)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.md")
    shutil.copytree(REPO_ROOT / "examples" / "shop", app / "shop", ignore=ignore)
    python = str(venv / "bin" / "python")
    where = _run([python, "-c", "import eventsource; print(eventsource.__file__)"], app)
    assert Path(where.stdout.strip()).is_relative_to(venv), describe(where)
    checked = _run(
        [python, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull, "shop"],
        app,
        _app_env("postgresql://unused"),
    )
    assert checked.returncode == 0, describe(checked)
    assert "Success: no issues found in 6 source files" in checked.stdout, checked.stdout
