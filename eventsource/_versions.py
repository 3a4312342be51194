"""What an append expects of its stream: a version number, ``NO_STREAM`` or ``ANY``."""

from __future__ import annotations

import enum

__all__ = ["ANY", "NO_STREAM", "ExpectedVersion"]


class ExpectedVersion(enum.Enum):
    """The non-numeric expectations of ``append``: ``NO_STREAM`` and ``ANY``."""

    NO_STREAM = -1
    ANY = -2

    def __repr__(self) -> str:
        return self.name


NO_STREAM = ExpectedVersion.NO_STREAM
ANY = ExpectedVersion.ANY
