"""SQL kept in ``.sql`` files: named statements, loaded once, composed for one schema.

Each part of the framework keeps its statements in one file beside its code (for example
``eventsource/store/queries.sql``), as blocks that start with a name line::

    -- name: read_stream
    -- The events of one stream from a version on, in order.
    SELECT ... FROM {schema}.events WHERE stream_id = %(stream_id)s ...

A block runs up to the next name line. ``{schema}`` is replaced by the schema's name, quoted
as an identifier by ``psycopg.sql`` (a schema name is data, never SQL text); parameters are
psycopg's ``%(name)s``. A literal brace is written twice (``'{{}}'``). The comment lines
directly under the name describe the statement for its readers; they are not sent.

``Statements`` subclasses declare the names they expect as ``str`` annotations; building one
checks that the file has exactly those blocks, so that a typo fails at import of the schema,
not at the first call. A subclass whose part announces work with LISTEN/NOTIFY sets
``channel_suffix``; its instances then have the schema's ``channel`` and ``listen`` too.
"""

from __future__ import annotations

import functools
import re
from importlib.resources import files
from typing import ClassVar, Self

from psycopg import sql

from eventsource._checks import check_schema_name
from eventsource.db._names import channel_name, listen_statement

__all__ = ["Statements", "load_blocks", "render"]

_NAME_LINE = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)


@functools.cache
def load_blocks(package: str, filename: str) -> dict[str, str]:
    """The named blocks of ``filename`` in ``package``, read once per process."""
    text = files(package).joinpath(filename).read_text(encoding="utf-8")
    marks = list(_NAME_LINE.finditer(text))
    if not marks:
        raise ValueError(f"{package}/{filename} has no '-- name:' blocks")
    blocks: dict[str, str] = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        name = mark.group(1)
        if not name.isidentifier():
            raise ValueError(f"{package}/{filename}: block name {name!r} is not an identifier")
        if name in blocks:
            raise ValueError(f"{package}/{filename}: two blocks are named {name!r}")
        body = text[mark.end() : following.start() if following else len(text)].strip()
        lines = body.splitlines()
        while lines and lines[0].lstrip().startswith("--"):
            lines.pop(0)
        body = "\n".join(lines).strip()
        if not body:
            raise ValueError(f"{package}/{filename}: block {name!r} is empty")
        blocks[name] = body
    return blocks


def render(template: str, schema: str) -> str:
    """``template`` with ``{schema}`` replaced by the quoted schema name."""
    return sql.SQL(template).format(schema=sql.Identifier(check_schema_name(schema))).as_string()


class Statements:
    """The statements of one ``.sql`` file, rendered for one schema.

    A subclass names its file (``package``, ``filename``) and declares each statement as a
    ``str`` annotation; instances have them as attributes.
    """

    package: ClassVar[str]
    filename: ClassVar[str]
    channel_suffix: ClassVar[str | None] = None  # set: the part has a LISTEN/NOTIFY channel

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
            setattr(self, name, render(template, schema))
        if self.channel_suffix is not None:
            self.channel = channel_name(schema, self.channel_suffix)
            self.listen = listen_statement(self.channel)


@functools.lru_cache(maxsize=1024)
def _rendered(cls: type[Statements], schema: str) -> Statements:
    return cls(schema)
