"""Checks of the JSON documents stored in jsonb: nesting depth, NUL and lone surrogates.

Stored payloads and metadata must be JSON that PostgreSQL's jsonb accepts and that the read
path can decode again; both limits are checked before anything is sent, so a bad document
fails with a ``ValueError`` naming it and nothing is written.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pydantic_core
from pydantic import BaseModel

from eventsource._checks import surrogate_at

__all__ = ["MAX_JSON_DEPTH", "check_json_depth", "check_json_text", "object_depth", "too_deep"]

# pydantic's JSON parser (jiter), which decodes stored payloads on every read, refuses a
# document nested deeper than this: a container with content at level 201 is "recursion limit
# exceeded". PostgreSQL's jsonb accepts thousands of levels, so this is the binding limit.
MAX_JSON_DEPTH = 200


def json_depth(text: str) -> int:
    """The nesting depth of a JSON document (containers; the top-level object counts 1)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def check_json_depth(text: str, what: str) -> str:
    """``text`` (JSON) if the read path can decode it; ``ValueError`` naming ``what`` if not.

    A document is refused when it is nested deeper than ``MAX_JSON_DEPTH`` levels, the limit of
    pydantic's JSON parser. Cheap for the common case: a document with at most that many
    brackets in all is not parsed at all.
    """
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return text
    try:
        pydantic_core.from_json(text)
    except ValueError as exc:
        if "recursion limit" in str(exc):
            raise ValueError(too_deep(what, json_depth(text))) from None
        raise ValueError(f"{what} cannot be decoded as JSON: {exc}") from None
    return text


def too_deep(what: str, depth: int | None) -> str:
    """The message for a document nested ``depth`` levels deep (``None``: circular)."""
    if depth is None:
        return f"{what} contains a circular reference and cannot be stored as JSON"
    return (
        f"{what} is nested {depth} levels deep, deeper than the {MAX_JSON_DEPTH} levels"
        " that reads can decode; nothing was written"
    )


def _children(value: object) -> Iterable[Any] | None:
    """The values inside a container as JSON encodes it; ``None`` for a scalar."""
    if isinstance(value, str | bytes | bytearray):
        return None
    if isinstance(value, Mapping):
        return value.values()
    if isinstance(value, list | tuple | set | frozenset):
        return value
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__ or {}
        return [*(getattr(value, name) for name in type(value).model_fields), *extra.values()]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [getattr(value, field.name) for field in dataclasses.fields(value)]
    return None


def object_depth(value: object) -> int | None:
    """How deeply JSON containers nest in ``value`` (dicts, lists, models); ``None`` if circular.

    Iterative, so a value nested thousands of levels deep is measured without a
    ``RecursionError``.
    """
    deepest = 0
    on_path: set[int] = set()
    stack: list[tuple[object, int, bool]] = [(value, 1, False)]
    while stack:
        item, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(item))
            continue
        children = _children(item)
        if children is None:
            continue
        if id(item) in on_path:
            return None
        deepest = max(deepest, depth)
        on_path.add(id(item))
        stack.append((item, depth, True))
        stack.extend((child, depth + 1, False) for child in children)
    return deepest


# A JSON escape of U+0000: "\u0000" not itself preceded by an escaping backslash.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def check_json_text(value: str, what: str) -> str:
    """Check encoded JSON for what PostgreSQL's jsonb refuses, before anything is sent."""
    if "\\u0000" in value and _NUL_ESCAPE.search(value):
        raise ValueError(f"{what} contains a NUL character (U+0000), which PostgreSQL cannot store")
    if surrogate_at(value) is not None:
        raise ValueError(f"{what} contains a lone surrogate character, which is not valid UTF-8")
    return value
