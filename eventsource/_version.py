"""The version of eventsource: that of the installed distribution that provides the package.

The distribution is looked up by the import package (``eventsource``) rather than by its own
name, so that a renamed distribution still reports its version. A source checkout that is not
installed reads ``pyproject.toml`` next to the package, else reports ``0+unknown``.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

__all__ = ["UNKNOWN_VERSION", "package_version"]

UNKNOWN_VERSION = "0+unknown"


def _checkout_version(root: Path) -> str | None:
    """The ``project.version`` of the ``pyproject.toml`` in ``root``, if there is one."""
    try:
        with (root / "pyproject.toml").open("rb") as file:
            project = tomllib.load(file).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    version = project.get("version") if isinstance(project, dict) else None
    return version if isinstance(version, str) and version else None


def package_version(package: str = "eventsource") -> str:
    """The version of the distribution that installs ``package``.

    Falls back to the source checkout's ``pyproject.toml``, then to ``0+unknown``.
    """
    for name in metadata.packages_distributions().get(package, []):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    root = Path(__file__).resolve().parent.parent
    return _checkout_version(root) or UNKNOWN_VERSION
