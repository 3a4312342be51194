"""Events: frozen pydantic models with a registered type name, a schema version and upcasters.

Every ``Event`` subclass registers under a type name (the class name unless ``name=`` is given)
and a schema version (``version=``, default 1). Stored payloads written under an older version
are upgraded on read by the registered upcasters, one version step at a time::

    class MoneyDeposited(Event, name="bank.MoneyDeposited", version=2):
        amount: int
        currency: str

    @upcaster(MoneyDeposited, from_version=1)
    def _add_currency(data: dict) -> dict:
        return {**data, "currency": "EUR"}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticSerializationError
from uuid_utils.compat import uuid7

from eventsource._checks import (
    INT_MAX,
    check_int,
    check_name,
)
from eventsource._errors import EventDecodeError, UnknownEventType, UpcastError
from eventsource._json import (
    MAX_JSON_DEPTH,
    check_json_depth,
    object_depth,
    too_deep,
)
from eventsource._registry import Registry

__all__ = [
    "Event",
    "EventDecodeError",
    "UpcastError",
    "decode_event",
    "encode_event",
    "event_class",
    "upcaster",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
E = TypeVar("E", bound="Event")

_registry: Registry[type[Event]] = Registry(
    "event type name", "choose another with `class {cls}(Event, name=...)`", UnknownEventType
)
_upcasters: dict[tuple[str, int], Upcaster] = {}


class Event(BaseModel):
    """Base class of domain events: a frozen pydantic model with an ``event_id``.

    ``class Opened(Event, name="bank.Opened", version=1)`` chooses the stored type name and the
    schema version; two classes under one name are an error when the second class is created.
    ``abstract=True`` declares an intermediate base class that is not registered.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Time-ordered (UUIDv7): new ids land at the right edge of the event-id index, not at
    # random pages of it, which keeps appends to a large log cheap.
    event_id: UUID = Field(default_factory=uuid7)

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        version: int = 1,
        abstract: bool = False,
        **kwargs: Any,
    ) -> None:
        """Register the subclass under its type name (``name``, else module.qualname) and
        schema ``version``; another class under the same name is a TypeError."""
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        if name is not None and not isinstance(name, str):
            raise ValueError(f"event type name must be a non-empty string, got {name!r}")
        check_int(version, "event schema version", low=1, high=INT_MAX)
        cls.event_type = _registry.add(cls, name)
        cls.schema_version = version


def event_class(event_type: str) -> type[Event]:
    """The registered class for a stored type name; ``UnknownEventType`` if none is loaded."""
    return _registry.find(event_type)


def is_registered(event_type: str) -> bool:
    """Whether a class for ``event_type`` is loaded in this process."""
    return event_type in _registry


def json_decoder(event_type: str) -> tuple[int, Callable[[str], Event] | None]:
    """The schema version of the class loaded for ``event_type`` and its JSON validator
    (``(0, None)`` if none is loaded): ``validator(text)`` is the model of a JSON document
    holding the payload's fields and the ``event_id``, built in one pass without a dict."""
    cls = _registry.get(event_type)
    if cls is None:
        return 0, None
    return cls.schema_version, cls.__pydantic_validator__.validate_json


def upcaster(event: type[Event] | str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function that turns a payload of ``from_version`` into ``from_version + 1``."""
    if isinstance(event, str):
        type_name = check_name(event, "event type name")
    elif isinstance(event, type) and issubclass(event, Event) and event.event_type:
        type_name = event.event_type
    else:
        raise TypeError(f"@upcaster takes a registered Event class or type name, got {event!r}")
    check_int(from_version, "from_version", low=1, high=INT_MAX - 1)

    def register(fn: Upcaster) -> Upcaster:
        if not callable(fn):
            raise TypeError(f"@upcaster decorates a function, got {fn!r}")
        key = (type_name, from_version)
        if key in _upcasters and _upcasters[key] is not fn:
            raise TypeError(f"an upcaster for {type_name!r} v{from_version} is already registered")
        _upcasters[key] = fn
        return fn

    return register


def encode_event(event: Event) -> str:
    """The stored JSON payload of an event (its fields, without the event id).

    ``ValueError`` naming the event type for a payload that reads could not decode (nested
    deeper than ``MAX_JSON_DEPTH``) or that is not JSON at all.
    """
    try:
        text = event.model_dump_json(exclude={"event_id"})
    except PydanticSerializationError as exc:
        what = f"event {event.event_type}"
        if "depth exceeded" in str(exc):  # pydantic's serializer stops at 255 levels
            raise ValueError(too_deep(what, object_depth(event))) from None
        raise ValueError(f"{what} cannot be encoded as JSON: {exc}") from None
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH:  # else it cannot be too deep
        check_json_depth(text, f"event {event.event_type}")
    return text


def decode_event(event_type: str, schema_version: int, data: str, event_id: str) -> Event:
    """Decode a stored payload (jsonb text) into its model, upcasting old schema versions.

    ``UnknownEventType`` if no class is registered under ``event_type``; ``UpcastError`` if the
    payload cannot be upgraded; ``EventDecodeError`` if it does not fit the model.
    """
    cls = _registry.get(event_type)
    if cls is None:
        raise UnknownEventType(event_type)
    try:
        if schema_version == cls.schema_version:
            # Splice the id into the JSON so pydantic validates everything in one pass (in
            # Rust); the validator is called directly, skipping model_validate_json's wrapper.
            validate = cls.__pydantic_validator__.validate_json
            if data == "{}":
                return validate('{"event_id":"' + event_id + '"}')  # type: ignore[no-any-return]
            return validate('{"event_id":"' + event_id + '",' + data[1:])  # type: ignore[no-any-return]
        payload = _upcast(cls, schema_version, json.loads(data))
        return cls.model_validate({**payload, "event_id": event_id})
    except ValidationError as exc:
        raise EventDecodeError(event_type, schema_version, _first_error(exc)) from exc
    except (ValueError, RecursionError) as exc:  # json.loads: not JSON, or nested too deep
        raise EventDecodeError(event_type, schema_version, f"{type(exc).__name__}: {exc}") from exc


def _first_error(exc: ValidationError) -> str:
    """One line for a validation error: where, what, and how many more."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    line = f"{where}: {first['msg']}" if where else str(first["msg"])
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more errors)"
    return line


def _upcast(cls: type[Event], stored_version: int, payload: dict[str, Any]) -> dict[str, Any]:
    """Run the registered upcasters from ``stored_version`` up to the class's schema version."""
    if stored_version > cls.schema_version:
        raise UpcastError(
            f"stored {cls.event_type!r} has schema version {stored_version}, newer than this"
            f" code's {cls.schema_version}: deploy the newer event class"
        )
    for version in range(stored_version, cls.schema_version):
        fn = _upcasters.get((cls.event_type, version))
        if fn is None:
            raise UpcastError(
                f"no upcaster for {cls.event_type!r} from version {version} to {version + 1}:"
                f" register one with @upcaster({cls.__name__}, from_version={version})"
            )
        try:
            payload = fn(payload)
        except Exception as exc:
            raise UpcastError(
                f"the upcaster of {cls.event_type!r} from version {version} to {version + 1}"
                f" ({getattr(fn, '__qualname__', fn)}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(payload, dict):
            raise UpcastError(
                f"the upcaster of {cls.event_type!r} from version {version} to {version + 1}"
                f" returned {type(payload).__name__}, not a dict"
            )
    return payload
