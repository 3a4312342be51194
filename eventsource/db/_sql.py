"""SQL kept in ``.sql`` files: named statements, loaded once, composed for one schema.

Each part of the framework keeps its statements in one file beside its code (for example
``eventsource/store/queries.sql``), as blocks that start with a name line::

    -- name: read_stream
    -- The events of one stream from a version on, in order.
    SELECT ... FROM {schema}.events WHERE stream_id = %(stream_id)s ...

A block runs up to the next name (or fragment) line. ``{schema}`` is replaced by the schema's
name, quoted as an identifier by ``psycopg.sql`` (a schema name is data, never SQL text);
parameters are psycopg's ``%(name)s``. A literal brace is written twice (``'{{}}'``). The
comment lines directly under the name describe the statement for its readers; they are not sent.

SQL that several statements share is written once, as a fragment: a block that starts with a
``-- fragment:`` line instead of a name line, described by its comment lines like a statement.
A line that holds only ``-- include: <fragment>`` stands for the fragment's text, each of its
lines indented as the include line is; fragments may include fragments. Includes are resolved
when the file is loaded, so the server gets whole statements, the same text every time (psycopg
prepares them as usual). Fragments are not statements: ``load_blocks`` gives only the named
blocks. Including what is not a fragment of the file, an include loop, an include that does not
stand alone on its line and a fragment that no statement uses are refused when the file loads::

    -- fragment: live
    -- The commands that are not dead yet.
    SELECT id FROM {schema}.commands WHERE status <> 'dead'

    -- name: live_count
    SELECT count(*) FROM (
        -- include: live
    ) AS c

``Statements`` subclasses declare the names they expect as ``str`` annotations; building one
checks that the file has exactly those blocks, so that a typo fails at import of the schema,
not at the first call. A subclass whose part announces work with LISTEN/NOTIFY sets
``channel_suffix``; its instances then have the schema's ``channel`` and ``listen`` too.

A file that serves several tables of the same shape names them with further placeholders
(``{table}``); a subclass per table gives their values in ``identifiers``, and each is
quoted as an identifier by ``psycopg.sql``, as the schema is::

    class RelayMembers(MembershipQueries):
        identifiers = {"table": "relay_workers", "group": "relay"}
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib.resources import files
from typing import ClassVar, Self

from psycopg import sql

from eventsource._checks import check_schema_name
from eventsource.db._driver import Direct
from eventsource.db._names import channel_name, listen_statement

__all__ = ["Statements", "load_blocks", "render"]

_BLOCK_LINE = re.compile(r"^--[ \t]*(name|fragment):[ \t]*(\S+)[ \t]*$", re.MULTILINE)
_INCLUDE_LINE = re.compile(r"^([ \t]*)--[ \t]*include:[ \t]*(\S+)[ \t]*$")
_INCLUDE_ANYWHERE = re.compile(r"--[ \t]*include:")

_Lines = list[str]  # a block's text, line by line


@functools.cache
def load_blocks(package: str, filename: str) -> dict[str, str]:
    """The statements (named blocks) of ``filename`` in ``package``, fragments included.

    Read once per process. ValueError, naming the file and the block, for a file that breaks
    the format described at the top of this module.
    """
    where = f"{package}/{filename}"
    text = files(package).joinpath(filename).read_text(encoding="utf-8")
    statements, fragments = _split(where, text)
    includes = _Includes(where, fragments)
    blocks = {name: "\n".join(includes.expand(name, lines)) for name, lines in statements.items()}
    unused = sorted(fragments.keys() - includes.used)
    if unused:
        raise ValueError(f"{where}: no statement includes the fragments {unused}")
    return blocks


def _split(where: str, text: str) -> tuple[dict[str, _Lines], dict[str, _Lines]]:
    """The statements and the fragments of a file, each as its lines without description."""
    marks = list(_BLOCK_LINE.finditer(text))
    if not any(mark.group(1) == "name" for mark in marks):
        raise ValueError(f"{where} has no '-- name:' blocks")
    statements: dict[str, _Lines] = {}
    fragments: dict[str, _Lines] = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        kind, name = mark.groups()
        if not name.isidentifier():
            raise ValueError(f"{where}: block name {name!r} is not an identifier")
        if name in statements or name in fragments:
            raise ValueError(f"{where}: two blocks are named {name!r}")
        body = text[mark.end() : following.start() if following else len(text)]
        lines = _without_description(body.splitlines())
        if not lines:
            raise ValueError(f"{where}: block {name!r} is empty")
        (statements if kind == "name" else fragments)[name] = lines
    return statements, fragments


def _without_description(lines: _Lines) -> _Lines:
    """A block's lines without its description (the leading comment lines) and blank ends.

    An include line is SQL, not description. The first line keeps its indentation (a fragment
    may start inside a condition); trailing white space is dropped.
    """
    start = 0
    while start < len(lines) and (
        not lines[start].strip()
        or (lines[start].lstrip().startswith("--") and not _INCLUDE_LINE.match(lines[start]))
    ):
        start += 1
    kept = [line.rstrip() for line in lines[start:]]
    while kept and not kept[-1]:
        kept.pop()
    return kept


class _Includes:
    """The fragments of one file, put in place of the include lines that name them."""

    def __init__(self, where: str, fragments: dict[str, _Lines]) -> None:
        self.where = where
        self.fragments = fragments
        self.used: set[str] = set()  # the fragments some statement includes

    def expand(self, name: str, lines: _Lines, through: tuple[str, ...] = ()) -> _Lines:
        """``lines`` of block ``name``, each include line replaced by its fragment's lines.

        ``through`` holds the fragments being expanded around this one, to refuse a loop.
        """
        out: _Lines = []
        for line in lines:
            include = _INCLUDE_LINE.match(line)
            if include is None:
                if _INCLUDE_ANYWHERE.search(line):
                    raise ValueError(
                        f"{self.where}: block {name!r}: an include must stand alone on its line:"
                        f" {line.strip()!r}"
                    )
                out.append(line)
                continue
            indent, target = include.groups()
            if target not in self.fragments:
                raise ValueError(
                    f"{self.where}: block {name!r} includes {target!r}, which is not a fragment"
                    " ('-- fragment:' block) of the file"
                )
            if target in through:
                loop = " -> ".join((*through, target))
                raise ValueError(f"{self.where}: fragments include themselves: {loop}")
            self.used.add(target)
            expanded = self.expand(target, self.fragments[target], (*through, target))
            out.extend(indent + part if part else part for part in expanded)
        return out


def render(template: str, schema: str, identifiers: Mapping[str, str] | None = None) -> str:
    """``template`` with ``{schema}`` replaced by the quoted schema name, and each further
    placeholder named in ``identifiers`` by its value, quoted as an identifier too."""
    names = {name: sql.Identifier(value) for name, value in (identifiers or {}).items()}
    if "schema" in names:
        raise ValueError("the schema is an argument of its own, not one of the identifiers")
    names["schema"] = sql.Identifier(check_schema_name(schema))
    return sql.SQL(template).format(**names).as_string()


class Statements:
    """The statements of one ``.sql`` file, rendered for one schema.

    A subclass names its file (``package``, ``filename``) and declares each statement as a
    ``str`` annotation; instances have them as attributes. ``identifiers`` gives the values of
    the file's placeholders other than ``{schema}`` (table and column names, quoted).
    """

    package: ClassVar[str]
    filename: ClassVar[str]
    channel_suffix: ClassVar[str | None] = None  # set: the part has a LISTEN/NOTIFY channel
    # Hot statements also sent through libpq directly: ``direct[name]`` is their ``Direct``.
    direct_names: ClassVar[tuple[str, ...]] = ()
    # Those of them whose rows are many: read in binary format (``Direct``'s ``loaded``).
    loaded_names: ClassVar[tuple[str, ...]] = ()
    identifiers: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def for_schema(cls, schema: str) -> Self:
        """The statements for ``schema``, rendered once per class, schema and process."""
        return _rendered(cls, schema)  # type: ignore[arg-type, return-value]

    def __init__(self, schema: str) -> None:
        """Render each block for ``schema``; TypeError if file and declarations disagree."""
        self.schema = schema
        blocks = load_blocks(self.package, self.filename)
        declared = {
            name
            for klass in type(self).__mro__
            for name, kind in vars(klass).get("__annotations__", {}).items()
            if kind in ("str", str) and name != "schema"
        }
        if declared != blocks.keys():
            missing = sorted(declared - blocks.keys())
            extra = sorted(blocks.keys() - declared)
            raise TypeError(
                f"{type(self).__name__} and {self.package}/{self.filename} disagree:"
                f" declared but not in the file {missing}, in the file but not declared {extra}"
            )
        for name, template in blocks.items():
            setattr(self, name, render(template, schema, self.identifiers))
        self.direct = {
            name: Direct(getattr(self, name), loaded=name in self.loaded_names)
            for name in self.direct_names
        }
        if self.channel_suffix is not None:
            self.channel = channel_name(schema, self.channel_suffix)
            self.listen = listen_statement(self.channel)


@functools.lru_cache(maxsize=1024)
def _rendered(cls: type[Statements], schema: str) -> Statements:
    return cls(schema)
