"""Write the sync twins of the framework's async modules: one source for both APIs.

The async module is the source. Its sync twin is made from it by a fixed set of rewrites:

- ``async def``/``async with``/``async for`` lose ``async``, and ``await`` is dropped;
- names are mapped (``AsyncEventStore`` -> ``EventStore``, ``fetch_async`` -> ``fetch``, ...,
  see ``NAMES``), in code and in docstrings and comments alike;
- an ``if True:  # ASYNC`` statement is replaced by its ``else`` branch (or dropped when it
  has none): the few places where the twins really differ;
- imports that the sync code no longer uses are dropped, then ``ruff`` sorts and formats.

Run ``python tools/async_to_sync.py`` after editing an async source; ``--check`` exits 1 when
a sync twin is not what its source gives (``tests/unit/test_generated.py`` runs it).
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (async source, sync twin), relative to the repository's root. A module that is both holds
# its async classes between the two markers below and their sync twins after the second one
# (its import block imports the names of both).
PAIRS = [
    ("eventsource/store/_async.py", "eventsource/store/_sync.py"),
    ("eventsource/store/_async_repository.py", "eventsource/store/_repository.py"),
    ("eventsource/commands/_queue.py", "eventsource/commands/_queue.py"),
]
SOURCE_MARK = "# -- async source: the sync twins after the next marker are generated from it --\n"
TWIN_MARK = (
    "# -- sync twins, generated from the async source above by tools/async_to_sync.py (run it\n"
    "# -- after editing the source; tests/unit/test_generated.py checks them): do not edit --\n"
)

# Names of the async API and their sync twins; applied to whole words everywhere.
NAMES = {
    "AsyncCommandQueue": "CommandQueue",
    "AsyncConnection": "Connection",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncEngine": "Engine",
    "AsyncEventStore": "EventStore",
    "AsyncGroupCommit": "GroupCommit",
    "AsyncIterator": "Iterator",
    "AsyncRawPool": "RawPool",
    "AsyncRepository": "Repository",
    "AsyncTransaction": "Transaction",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "async_engine": "sync_engine",
    "asynccontextmanager": "contextmanager",
    "drive_async": "drive",
    "driver_connection_async": "driver_connection",
    "fetch_async": "fetch",
    "fetch_page_async": "fetch_page",
    "read_ahead_async": "read_ahead",
    "schema_status_async": "schema_status",
    "upgrade_schema_async": "upgrade_schema",
    "_async_repository": "_repository",
    "_async": "_sync",
}

# Whole import lines of the async sources and their sync twins.
IMPORTS = {
    "from sqlalchemy.ext.asyncio import": "from sqlalchemy import",
}

# Phrases of docstrings and comments that speak of the async API.
PHRASES = {
    "async with ": "with ",
    "async for ": "for ",
    "await ": "",
    " (async)": "",
    "(async)": "",
}

_WORD = re.compile(r"\b(" + "|".join(sorted(map(re.escape, NAMES), key=len, reverse=True)) + r")\b")


def _header(source: str) -> str:
    return (
        f"# Generated from {source}\n"
        "# by tools/async_to_sync.py: edit that file, then run `python tools/async_to_sync.py`\n"
        "# (tests/unit/test_generated.py checks that this file is current).\n"
    )


def _async_only(text: str) -> list[tuple[int, int, list[str]]]:
    """(first line, last line, replacement lines) of every ``if True:  # ASYNC`` statement."""
    lines = text.splitlines(keepends=True)
    edits = []
    for node in ast.walk(ast.parse(text)):
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Constant)):
            continue
        if node.test.value is not True or "# ASYNC" not in lines[node.lineno - 1]:
            continue
        end = node.end_lineno or node.lineno
        replacement: list[str] = []
        if node.orelse:
            # The else branch starts after the ``else:`` line (comments before its first
            # statement belong to it).
            first = node.body[-1].end_lineno or node.lineno
            while not lines[first].strip().startswith("else:"):
                first += 1
            body = lines[first + 1 : end]
            indent = len(lines[node.lineno - 1]) - len(lines[node.lineno - 1].lstrip())
            inner = len(body[0]) - len(body[0].lstrip())
            replacement = [line[inner - indent :] if line.strip() else line for line in body]
        edits.append((node.lineno, end, replacement))
    return edits


def _drop_async_only(text: str) -> str:
    lines = text.splitlines(keepends=True)
    for first, last, replacement in sorted(_async_only(text), reverse=True):
        lines[first - 1 : last] = replacement
    return "".join(lines)


def _prose(text: str) -> str:
    for phrase, twin in PHRASES.items():
        text = text.replace(phrase, twin)
    return _WORD.sub(lambda m: NAMES[m.group(1)], text)


def _rewrite_tokens(text: str) -> str:
    """Drop ``async``/``await`` and map names, keeping every other character in place."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    edits: list[tuple[int, int, str]] = []
    for i, tok in enumerate(tokens):
        start = offsets[tok.start[0] - 1] + tok.start[1]
        end = offsets[tok.end[0] - 1] + tok.end[1]
        if tok.type == tokenize.NAME and tok.string in ("async", "await"):
            following = tokens[i + 1]
            edits.append((start, offsets[following.start[0] - 1] + following.start[1], ""))
        elif tok.type == tokenize.NAME and tok.string in NAMES:
            edits.append((start, end, NAMES[tok.string]))
        elif tok.type in (tokenize.STRING, tokenize.COMMENT):
            edits.append((start, end, _prose(tok.string)))
    out = text
    for start, end, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[end:]
    return out


def _imports(text: str) -> str:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        for prefix, twin in IMPORTS.items():
            if line.startswith(prefix):
                lines[i] = twin + line[len(prefix) :]
    return "".join(lines)


def _ruff(text: str, path: Path) -> str:
    """Apply the project's lint fixes (unused imports, nested ``with`` joined, ``yield from``)
    and format: the sync code that the rewrites leave reads as if written by hand."""
    for args in (["check", "--fix-only", "--unsafe-fixes"], ["format"]):
        command = [sys.executable, "-m", "ruff", *args, "--quiet", "--stdin-filename", str(path)]
        text = subprocess.run(
            [*command, "-"], input=text, capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
    return text


_SOURCE_NOTE = re.compile(r"\n\nAsync source: .*?(?=\n\n|\n\"\"\")", re.DOTALL)


def _in_module_twins(path: str) -> str:
    """The module ``path`` with the twins after ``TWIN_MARK`` made from its async source."""
    text = (ROOT / path).read_text()
    head, found, rest = text.partition(SOURCE_MARK)
    source, found_twin, _ = rest.partition(TWIN_MARK)
    if not (found and found_twin):
        raise ValueError(f"{path}: the source and twin markers are missing")
    twins = _rewrite_tokens(_drop_async_only(source.strip() + "\n"))
    command = [sys.executable, "-m", "ruff", "format", "--quiet", "--stdin-filename", path, "-"]
    twins = subprocess.run(
        command, input=twins, capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return f"{head}{SOURCE_MARK}{source}{TWIN_MARK}\n\n{twins}"


def sync_twin(source: str, target: str) -> str:
    """The sync twin of the async module ``source`` (both paths relative to the root); for a
    module that holds both, the module with its twins made anew."""
    if source == target:
        return _in_module_twins(source)
    # The source's note that it is the source is left out: the twin gets a header instead.
    text = _SOURCE_NOTE.sub("", (ROOT / source).read_text(), count=1)
    text = _rewrite_tokens(_imports(_drop_async_only(text)))
    docstring_end = _docstring_end(text)
    text = text[:docstring_end] + "\n" + _header(source) + text[docstring_end:]
    return _ruff(text, ROOT / target)


def _docstring_end(text: str) -> int:
    """Where the module docstring ends (the header comment goes right after it)."""
    module = ast.parse(text)
    first = module.body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)):
        return 0
    lines = text.splitlines(keepends=True)
    return sum(len(line) for line in lines[: first.end_lineno])


def main(argv: list[str] | None = None) -> int:
    """Write every sync twin, or with ``--check`` list those that are not current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = []
    for source, target in PAIRS:
        text = sync_twin(source, target)
        path = ROOT / target
        if path.exists() and path.read_text() == text:
            continue
        stale.append(target)
        if not args.check:
            path.write_text(text)
    for target in stale:
        print(f"{target}: {'not current' if args.check else 'written'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
