"""README.md's Python snippets run as pasted: all of them, in order, in one fresh process,
twice in a row (a reader runs the tour again), against a fresh schema."""

from __future__ import annotations

import re
import subprocess
import sys

from eventsource import EventStore
from tests.acceptance._support import REPO_ROOT, cli_env
from tests.integration._support import sql

README = REPO_ROOT / "README.md"


def snippets() -> list[str]:
    """The ```python blocks of README.md, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_the_readme_shows_python_snippets() -> None:
    """The README shows code (so the test below cannot pass by finding none)."""
    assert len(snippets()) >= 6


def test_every_readme_snippet_runs_as_pasted_and_again(
    store: EventStore, database_url: str
) -> None:
    """The snippets, one after another in one interpreter, exit 0 twice, and write into the
    schema that EVENTSOURCE_SCHEMA names."""
    script = "\n\n".join(snippets())
    env = cli_env(
        database_url,
        EVENTSOURCE_SCHEMA=store.schema,
        PGOPTIONS=f"-c search_path={store.schema}",  # the snippets' own tables go there too
        PYTHONPATH=str(REPO_ROOT),
    )
    for run in (1, 2):
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, f"run {run} failed:\n{done.stderr[-3000:]}"
    streams = {row[0] for row in sql(store, "SELECT DISTINCT stream_id FROM {s}.events")}
    assert {"acc-1", "acc-2", "acc-3"} <= streams
    assert sql(store, "SELECT count(*) FROM {s}.balances")[0][0] >= 2
