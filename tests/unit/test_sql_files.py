"""Statements kept in .sql files: named blocks, loaded once, composed for one schema."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventsource.db._sql import Statements, load_blocks, render


@pytest.fixture
def package(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A throwaway importable package to hold .sql files."""
    name = f"sqlpkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        yield name, tmp_path / name
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_blocks_are_named_and_sent_without_their_description(package: tuple[str, Path]) -> None:
    """Each '-- name:' line starts a block that runs to the next one; the comment lines
    under the name describe it and are not part of the statement."""
    name, path = package
    (path / "q.sql").write_text(
        "-- a file comment\n"
        "-- name: one\n-- The first.\nSELECT 1\n\n"
        "-- name: two\nSELECT * FROM {schema}.t WHERE a = %(a)s\n"
    )
    blocks = load_blocks(name, "q.sql")
    assert blocks == {
        "one": "SELECT 1",
        "two": "SELECT * FROM {schema}.t WHERE a = %(a)s",
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("SELECT 1\n", "no '-- name:' blocks"),
        ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n", "two blocks are named 'a'"),
        ("-- name: a\n-- name: b\nSELECT 2\n", "block 'a' is empty"),
        ("-- name: a\n-- only a comment\n-- name: b\nSELECT 2\n", "block 'a' is empty"),
        ("-- name: a-b\nSELECT 1\n", "block name 'a-b' is not an identifier"),
    ],
)
def test_a_malformed_file_is_refused_by_name(
    package: tuple[str, Path], text: str, error: str
) -> None:
    name, path = package
    (path / "bad.sql").write_text(text)
    with pytest.raises(ValueError, match=error):
        load_blocks(name, "bad.sql")


def test_the_schema_is_quoted_as_an_identifier() -> None:
    """{schema} becomes a quoted identifier; doubled braces are literal braces."""
    assert render("SELECT '{{}}'::int[] FROM {schema}.t", "My_Schema") == (
        "SELECT '{}'::int[] FROM \"My_Schema\".t"
    )


@pytest.mark.parametrize("schema", ['x"; DROP TABLE t; --', "", "a b", "1abc", "é" * 70])
def test_a_hostile_or_invalid_schema_name_is_refused(schema: str) -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        render("SELECT 1 FROM {schema}.t", schema)


def statements(package: tuple[str, Path], filename: str, text: str, **attributes: Any) -> Any:
    """A ``Statements`` class declaring ``one``, over a file of ``text`` in the test package."""
    name, path = package
    (path / filename).write_text(text)
    namespace = {"package": name, "filename": filename, "__annotations__": {"one": "str"}}
    return type("Part", (Statements,), {**namespace, **attributes})


def test_statements_must_match_the_file(package: tuple[str, Path]) -> None:
    """A statement declared but missing from the file (or the reverse) fails at once."""
    name, _ = package
    good = statements(package, "s.sql", "-- name: one\nSELECT 1 FROM {schema}.t\n")
    assert good("s1").one == 'SELECT 1 FROM "s1".t'

    class Bad(Statements):
        package = name
        filename = "s.sql"
        one: str
        two: str

    with pytest.raises(TypeError, match=r"declared but not in the file \['two'\]"):
        Bad("s1")


def test_a_part_with_a_channel_gets_its_channel_and_listen(package: tuple[str, Path]) -> None:
    """``channel_suffix`` gives the instances the schema's channel and its LISTEN statement."""
    text = "-- name: one\nSELECT 1\n"
    announcing = statements(package, "c.sql", text, channel_suffix=".jobs")
    quiet = statements(package, "c.sql", text)

    loud = announcing("shop")
    assert loud.channel == "eventsource.shop.jobs"
    assert loud.listen == 'LISTEN "eventsource.shop.jobs"'
    assert not hasattr(quiet("shop"), "channel")


def test_further_identifiers_are_quoted_as_the_schema_is() -> None:
    """A placeholder named in ``identifiers`` becomes its value, quoted as an identifier."""
    template = "DELETE FROM {schema}.{table} WHERE {group} = %(group)s"
    assert render(template, "s1", {"table": "relay_workers", "group": 'odd"name'}) == (
        'DELETE FROM "s1"."relay_workers" WHERE "odd""name" = %(group)s'
    )
    with pytest.raises(ValueError, match="the schema is an argument of its own"):
        render(template, "s1", {"schema": "other", "table": "t", "group": "g"})


def test_a_subclass_names_its_tables_in_identifiers(package: tuple[str, Path]) -> None:
    """One file serves tables of the same shape: each subclass gives its own identifiers."""
    members = statements(package, "m.sql", "-- name: one\nSELECT {group} FROM {schema}.{table}\n")

    class Relays(members):
        identifiers = {"table": "relay_workers", "group": "relay"}

    class Projections(members):
        identifiers = {"table": "projection_workers", "group": "projection"}

    assert Relays("s1").one == 'SELECT "relay" FROM "s1"."relay_workers"'
    assert Projections.for_schema("s1").one == (
        'SELECT "projection" FROM "s1"."projection_workers"'
    )
