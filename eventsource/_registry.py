"""The registries of classes by the names stored with their instances.

Events, commands and projections each keep one, filled as their subclasses are defined::

    _registry: Registry[type[Event]] = Registry(
        "event type name", "choose another with `class {cls}(Event, name=...)`", UnknownEventType
    )
    cls.event_type = _registry.add(cls, name)   # in __init_subclass__
    _registry.find("AccountOpened")              # the class, or UnknownEventType
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from eventsource._checks import check_name

__all__ = ["Registry"]

T = TypeVar("T", bound=type)


class Registry(dict[str, T]):
    """Classes by name. ``what`` names the name in errors ("event type name"); ``hint`` says
    how to choose another (``{cls}`` stands for the class's name); ``unknown(name)`` is the
    error of ``find`` for a name that no loaded class has."""

    def __init__(
        self, what: str, hint: str, unknown: Callable[[str], Exception] = KeyError
    ) -> None:
        super().__init__()
        self.what = what
        self.hint = hint
        self.unknown = unknown

    def add(self, cls: T, name: str | None = None) -> str:
        """Register ``cls`` under ``name`` (None: the class's name), checked as a stored name,
        and return the name.

        The same class defined again (same module and qualified name, as when a module is
        imported both as ``__main__`` and by its name) takes its own place; a TypeError names
        the other class that has the name already.
        """
        type_name = check_name(name if name is not None else cls.__name__, self.what)
        existing = self.get(type_name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise TypeError(
                f"{self.what} {type_name!r} is already registered by"
                f" {existing.__module__}.{existing.__qualname__};"
                f" {self.hint.format(cls=cls.__name__)}"
            )
        self[type_name] = cls
        return type_name

    def find(self, name: str) -> T:
        """The class registered under ``name``; ``unknown(name)`` if no loaded class has it."""
        try:
            return self[name]
        except KeyError:
            raise self.unknown(name) from None
