"""The layout rules of the source tree: small modules, and no reaching into other packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400
INTERNAL = "eventsource._internal"  # the one documented module of internals for other packages


def _modules() -> list[Path]:
    return sorted(
        path
        for top in ("eventsource", "projections")
        for path in (ROOT / top).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def _package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1])  # a package's __init__ belongs to the package itself


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_longer_than_the_limit(path: Path) -> None:
    """Every module of the framework fits in MAX_LINES lines."""
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def _private_module_of_another_package(importer: Path, module: str) -> bool:
    """Whether ``module`` is an underscore module (or inside one) of a package that is neither
    ``importer``'s own package nor one of its parents."""
    parts = module.split(".")
    if parts[0] not in ("eventsource", "projections") or f"{module}.".startswith(f"{INTERNAL}."):
        return False
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])  # the package that holds the private module
            mine = _package_of(importer)
            return not (mine == owner or (mine.startswith(owner + ".") and i == 1))
    return False


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_packages_private_modules(path: Path) -> None:
    """Packages use each other through their ``__init__`` (and ``eventsource._internal``);
    a subpackage may use its parent package's private modules, as psycopg's do."""
    bad = sorted(
        {m for m in _imported_modules(path) if _private_module_of_another_package(path, m)}
    )
    assert not bad, f"{path.relative_to(ROOT)} imports private modules of other packages: {bad}"


def test_projections_use_only_the_public_api_and_the_internal_module() -> None:
    """``projections`` takes the framework's internals from one documented module."""
    allowed = ("eventsource", INTERNAL)
    for path in (ROOT / "projections").rglob("*.py"):
        for module in _imported_modules(path):
            if module.startswith("eventsource."):
                assert module.startswith(allowed[1]) or module.count(".") == 1, (
                    f"{path.relative_to(ROOT)} imports {module}"
                )


def _undocumented(path: Path) -> list[str]:
    """Public classes and functions, and private ones over 15 lines, without a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    missing = [] if ast.get_docstring(tree) else ["the module"]

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            name = child.name
            length = (child.end_lineno or child.lineno) - child.lineno + 1
            overload = any(
                isinstance(d, ast.Name) and d.id == "overload"
                for d in getattr(child, "decorator_list", [])
            )
            public = not name.startswith("_")
            if (public or length > 15) and not overload and not ast.get_docstring(child):
                missing.append(f"{prefix}{name} (line {child.lineno})")
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{name}.")

    visit(tree, "")
    return missing


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_public_and_long_code_is_documented(path: Path) -> None:
    """Every module, public class and function, and private one over 15 lines has a docstring."""
    missing = _undocumented(path)
    assert not missing, f"{path.relative_to(ROOT)}: no docstring on {', '.join(missing)}"
