"""The distribution ships every package of the source tree, and their data files."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS.get("package-dir", {})
LISTED: set[str] = set(SETUPTOOLS["packages"])


def _directory(package: str) -> Path:
    """Where the package's files live in the repository, after the ``package-dir`` mapping."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        mapped = PACKAGE_DIR.get(".".join(parts[:i]))
        if mapped is not None:
            return ROOT / mapped / Path(*parts[i:])
    return ROOT / Path(*parts)


def _roots() -> dict[str, Path]:
    """The packages that ship, listed or mapped, without a listed parent; with their folders."""
    return {
        name: _directory(name)
        for name in LISTED
        if name.rpartition(".")[0] not in LISTED or name in PACKAGE_DIR
    }


def test_every_package_of_the_framework_is_listed_for_the_wheel() -> None:
    """Each directory with an ``__init__.py`` under a shipped package's folder is listed."""
    found = {
        ".".join([root, *init.parent.relative_to(folder).parts])
        for root, folder in _roots().items()
        for init in folder.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found == LISTED


def test_only_the_framework_packages_are_top_level() -> None:
    """The wheel adds no top-level package but eventsource and projections (no `migrations`)."""
    assert {name.split(".")[0] for name in LISTED} == {"eventsource", "projections"}


def test_every_listed_package_has_its_folder() -> None:
    """Each listed package maps to a folder with an ``__init__.py``."""
    missing = sorted(name for name in LISTED if not (_directory(name) / "__init__.py").is_file())
    assert missing == []


def test_data_files_ship_with_their_packages() -> None:
    """Every package holding .sql or .mako files lists them as package data."""
    data: dict[str, list[str]] = SETUPTOOLS["package-data"]
    for name in LISTED:
        folder = _directory(name)
        for suffix in (".sql", ".mako"):
            files = [path.name for path in folder.glob(f"*{suffix}")]
            if files:
                patterns = data.get(name, [])
                assert f"*{suffix}" in patterns or set(files) <= set(patterns), (name, files)
