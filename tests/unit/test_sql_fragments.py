"""Fragments of .sql files: SQL written once, included by the statements that share it."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventsource.commands._queries import CommandQueries
from eventsource.db._sql import Statements, load_blocks
from eventsource.store._queries import Queries
from projections._queries import ProjectionQueries

SqlFile = Callable[[str], tuple[str, str]]


@pytest.fixture
def sql_file(tmp_path: Path) -> Iterator[SqlFile]:
    """Write a text as a .sql file of a throwaway package: its package and file names."""
    package = f"fragments_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))

    def written(text: str) -> tuple[str, str]:
        filename = f"f{uuid.uuid4().hex[:8]}.sql"
        (tmp_path / package / filename).write_text(text)
        return package, filename

    try:
        yield written
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(package, None)


NESTED = """\
-- fragment: live
-- Live commands.
SELECT id
FROM t
    -- include: alive

-- fragment: alive
-- The test.
WHERE status <> 'dead'

-- name: live_count
-- How many.
SELECT count(*) FROM (
    -- include: live
) AS c

-- name: first_live
-- include: live
LIMIT 1
"""


def test_an_include_line_stands_for_its_fragment_indented_as_it_is(sql_file: SqlFile) -> None:
    """Fragments are put in place, nested ones too, without their descriptions; they are not
    statements themselves."""
    assert load_blocks(*sql_file(NESTED)) == {
        "live_count": "SELECT count(*) FROM (\n"
        "    SELECT id\n"
        "    FROM t\n"
        "        WHERE status <> 'dead'\n"
        ") AS c",
        "first_live": "SELECT id\nFROM t\n    WHERE status <> 'dead'\nLIMIT 1",
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "-- name: a\n-- include: nowhere\n",
            "block 'a' includes 'nowhere', which is not a fragment",
        ),
        (
            "-- name: a\nSELECT 1\n-- name: b\n-- include: a\n",
            "block 'b' includes 'a', which is not a fragment",
        ),
        (
            "-- fragment: f\n-- include: g\n-- fragment: g\n-- include: f\n"
            "-- name: a\n-- include: f\n",
            r"fragments include themselves: f -> g -> f",
        ),
        (
            "-- fragment: f\nSELECT 1\n-- name: a\nSELECT * FROM ( -- include: f\n)\n",
            "block 'a': an include must stand alone on its line",
        ),
        (
            "-- fragment: f\nSELECT 1\n-- fragment: g\n-- include: f\n-- name: a\nSELECT 2\n",
            r"no statement includes the fragments \['f', 'g'\]",
        ),
        ("-- fragment: f\nSELECT 1\n", "no '-- name:' blocks"),
        ("-- fragment: f\n-- only a description\n-- name: a\nSELECT 1\n", "block 'f' is empty"),
        ("-- fragment: a\nSELECT 1\n-- name: a\nSELECT 2\n", "two blocks are named 'a'"),
    ],
)
def test_a_broken_include_is_refused_when_the_file_loads(
    sql_file: SqlFile, text: str, error: str
) -> None:
    written = sql_file(text)
    with pytest.raises(ValueError, match=error):
        load_blocks(*written)


def test_a_fragment_cannot_be_declared_as_a_statement(sql_file: SqlFile) -> None:
    """Statements get only the named blocks: declaring a fragment fails like a typo."""
    package_name, file_name = sql_file("-- fragment: f\nSELECT 1\n-- name: one\n-- include: f\n")

    class WithFragment(Statements):
        package = package_name
        filename = file_name
        one: str
        f: str

    with pytest.raises(TypeError, match=r"declared but not in the file \['f'\]"):
        WithFragment("s1")


@pytest.mark.parametrize("queries", [Queries, CommandQueries, ProjectionQueries])
def test_every_statement_of_the_framework_loads_whole(queries: type[Statements]) -> None:
    """Each statement has its includes resolved: no comment is sent, parentheses balance."""
    loaded = queries("s1")
    names = [name for name, kind in queries.__annotations__.items() if kind in ("str", str)]
    assert len(names) > 5
    for name in names:
        text = getattr(loaded, name)
        assert "--" not in text, name
        assert text.count("(") == text.count(")"), name


def _parameters(statement: str) -> set[str]:
    return set(re.findall(r"%\((\w+)\)b", statement))


def test_the_one_stream_appends_are_a_claim_and_a_write() -> None:
    """append_one_<kind> and append_one_event_<kind> share the claim of their kind, all kinds
    share the write of their form, and each takes the parameters of its claim and write."""
    queries = Queries("s1")
    claims: dict[str, str] = {}
    writes: dict[str, set[str]] = {"many": set(), "one": set()}
    for kind in ("new", "at", "any"):
        claims[kind], many = getattr(queries, f"append_one_{kind}").split("\nh AS (\n")
        claim, one = getattr(queries, f"append_one_event_{kind}").split("\nh AS (\n")
        assert claim == claims[kind]
        assert claim.startswith("WITH s AS (\n")
        writes["many"].add(many)
        writes["one"].add(one)
    assert len(set(claims.values())) == 3
    assert len(writes["many"]) == len(writes["one"]) == 1
    claim_parameters = {"new": {"partition"}, "at": {"expected"}, "any": {"partition", "first_id"}}
    many_parameters = {
        "stream_id",
        "n",
        "event_ids",
        "types",
        "schema_versions",
        "data",
        "metadata",
    }
    one_parameters = {"stream_id", "n", "first_id", "type", "schema_version", "data", "metadata"}
    for kind, own in claim_parameters.items():
        many_sql, one_sql = (
            getattr(queries, f"{n}_{kind}") for n in ("append_one", "append_one_event")
        )
        assert _parameters(many_sql) == own | many_parameters
        assert _parameters(one_sql) == own | one_parameters


def test_the_two_claims_of_the_queue_differ_only_by_their_queue_test() -> None:
    queries = CommandQueries("s1")
    several, one = "c.queue = ANY(%(queues)b::text[])", "c.queue = %(queue)b::text"
    assert queries.claim.count(several) == 1
    assert queries.claim.replace(several, one) == queries.claim_one_queue
