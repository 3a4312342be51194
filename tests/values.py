"""Values shared by the tests of input checks: documents of a given nesting depth."""

from __future__ import annotations

from typing import Any


def lists(depth: int) -> Any:
    """A value of ``depth`` nested lists around a number."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def dicts(depth: int) -> Any:
    """A value of ``depth`` nested dicts around a number."""
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value
