"""The sync twins are generated from their async sources and are current."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("async_to_sync", ROOT / "tools" / "async_to_sync.py")
assert spec is not None and spec.loader is not None
async_to_sync = importlib.util.module_from_spec(spec)
sys.modules["async_to_sync"] = async_to_sync
spec.loader.exec_module(async_to_sync)


def test_every_sync_twin_is_what_its_async_source_gives() -> None:
    """Each generated sync module equals the rewrite of its async source (none edited by hand)."""
    for source, target in async_to_sync.PAIRS:
        expected = async_to_sync.sync_twin(source, target)
        assert (ROOT / target).read_text() == expected, (
            f"{target} is not current: edit {source}, then run `python tools/async_to_sync.py`"
        )


def test_twins_keep_no_async_code_and_name_their_source() -> None:
    """A generated twin has no async syntax left and says where it comes from."""
    for source, target in async_to_sync.PAIRS:
        text = (ROOT / target).read_text()
        if source == target:  # the twins follow their source in the same module
            assert async_to_sync.SOURCE_MARK in text
            _, _, text = text.partition(async_to_sync.TWIN_MARK)
            assert "class " in text
        else:
            assert f"# Generated from {source}" in text
        for word in ("async def", "await ", "async with", "AsyncEventStore", "# ASYNC"):
            assert word not in text, f"{target} still has {word!r}"


def test_async_only_blocks_keep_their_else_branch() -> None:
    """``if True:  # ASYNC`` keeps the else branch, dedented, and drops a block without one."""
    text = (
        "def f():\n"
        "    if True:  # ASYNC\n"
        "        a = 1\n"
        "    else:\n"
        "        a = 2\n"
        "    if True:  # ASYNC\n"
        "        b = 3\n"
        "    return a\n"
    )
    assert async_to_sync._drop_async_only(text) == "def f():\n    a = 2\n    return a\n"


def test_rewrites_map_names_in_code_and_prose_but_not_other_words() -> None:
    """Names map as whole words in code, docstrings and comments; ``async``/``await`` go."""
    text = (
        "async def go(store: AsyncEventStore) -> None:\n"
        '    """Use ``await store.append`` (an AsyncEventStore)."""\n'
        "    async with store.transaction() as tx:  # an AsyncTransaction\n"
        '        await fetch_async(tx, "AsyncEventStores")\n'
    )
    assert async_to_sync._rewrite_tokens(text) == (
        "def go(store: EventStore) -> None:\n"
        '    """Use ``store.append`` (an EventStore)."""\n'
        "    with store.transaction() as tx:  # an Transaction\n"
        '        fetch(tx, "AsyncEventStores")\n'
    )
