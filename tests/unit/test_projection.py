"""Projection classes: names and options are checked when the class is created (no database)."""

from __future__ import annotations

from typing import Any

import pytest

from projections import Projection, Reactor, _projection, handles


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("p\x00", ValueError, r"projection name must not contain a NUL character: 'p\\x00'"),
        ("p\udcff", ValueError, "projection name is not valid UTF-8"),
        ("", ValueError, "projection name must not be empty"),
        ("   ", ValueError, "projection name must not be empty"),
        ("p" * 201, ValueError, "projection name is 201 characters long"),
        (7, TypeError, "projection name must be a str"),
    ],
    ids=["nul", "surrogate", "empty", "blank", "long", "int"],
)
def test_a_bad_projection_name_fails_at_class_creation(
    name: object, error: type[Exception], match: str
) -> None:
    """A name PostgreSQL cannot store is refused when the class is defined, not at run time."""
    before = dict(_projection._registry)
    with pytest.raises(error, match=match):
        type("Bad", (Projection,), {"name": name})
    assert _projection._registry == before


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, r"Bad\.batch_size must be from 1 to 100000, got 0"),
        ({"batch_size": 2**63}, ValueError, r"Bad\.batch_size must be from 1 to 100000"),
        ({"batch_size": True}, TypeError, r"Bad\.batch_size must be an int"),
        ({"pipelined": "yes"}, TypeError, r"Bad\.pipelined must be a bool"),
    ],
)
def test_bad_class_options_fail_at_class_creation(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """batch_size and pipelined are checked when the class is defined."""
    with pytest.raises(error, match=match):
        type("Bad", (Projection,), {"name": "unit.bad-options", **options})


def test_handles_checks_stored_type_names() -> None:
    """@handles refuses a type name that could not be stored."""
    with pytest.raises(ValueError, match="event type name must not be empty"):
        handles("")
    with pytest.raises(ValueError, match="event type name is not valid UTF-8"):
        handles("t\udcff")


def test_reactor_start_at_head_must_be_a_bool() -> None:
    """A reactor's start_at_head that is not a bool is refused at class creation."""
    with pytest.raises(TypeError, match=r"Bad\.start_at_head must be a bool, got str: 'no'"):
        type("Bad", (Reactor,), {"name": "unit.bad-reactor", "start_at_head": "no"})
