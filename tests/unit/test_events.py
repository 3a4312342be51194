"""Events: the type registry, ids, validation, encoding and upcasting (no database)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from eventsource import Event, EventSourceError, UnknownEventType, UpcastError, _events, upcaster
from eventsource._events import (
    EventDecodeError,
    decode_event,
    encode_event,
    event_class,
    is_registered,
)
from tests.domain import Deposited, Opened


@pytest.fixture(autouse=True)
def isolated_registry() -> Iterator[None]:
    """Event classes defined by a test are forgotten after it."""
    registry = dict(_events._registry)
    upcasters = dict(_events._upcasters)
    yield
    _events._registry.clear()
    _events._registry.update(registry)
    _events._upcasters.clear()
    _events._upcasters.update(upcasters)


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


# -- registry -----------------------------------------------------------------------------


def test_type_name_defaults_to_class_name() -> None:
    """An Event subclass without name= registers under its class name, at version 1."""

    class UnitDefaultNamed(Event):
        value: int

    assert UnitDefaultNamed.event_type == "UnitDefaultNamed"
    assert UnitDefaultNamed.schema_version == 1
    assert event_class("UnitDefaultNamed") is UnitDefaultNamed
    assert is_registered("UnitDefaultNamed")


def test_name_and_version_are_chosen_by_class_options() -> None:
    """name= and version= set the stored type name and schema version."""
    name = unique("unit.Named")

    class Named(Event, name=name, version=3):
        value: int

    assert Named.event_type == name
    assert Named.schema_version == 3
    assert event_class(name) is Named
    assert not is_registered("Named")


def test_duplicate_type_name_raises_at_class_creation() -> None:
    """A second class under a taken type name is a TypeError naming the name and first class."""
    name = unique("unit.Dup")

    class First(Event, name=name):
        a: int

    with pytest.raises(TypeError, match="already registered") as info:

        class Second(Event, name=name):
            b: int

    assert name in str(info.value)
    assert "First" in str(info.value)
    assert event_class(name) is First


def test_duplicate_default_name_of_another_module_raises() -> None:
    """A class named like a registered one (default name) but elsewhere defined is rejected."""
    with pytest.raises(TypeError, match=r"test\.Opened"):

        class Clash(Event, name="test.Opened"):
            owner: str


def test_redefining_the_same_module_and_qualname_is_allowed() -> None:
    """Defining the same class again (same module and qualname) re-registers it silently."""
    name = unique("unit.Again")

    def define(version: int) -> type[Event]:
        class Again(Event, name=name, version=version):
            value: int

        return Again

    first = define(1)
    second = define(2)
    assert first is not second
    assert event_class(name) is second
    assert second.schema_version == 2


def test_abstract_base_is_not_registered() -> None:
    """abstract=True declares an intermediate base that takes no type name."""

    class UnitAbstractBase(Event, abstract=True):
        tenant: str

    class UnitConcrete(UnitAbstractBase, name=unique("unit.Concrete")):
        value: int

    assert not is_registered("UnitAbstractBase")
    assert is_registered(UnitConcrete.event_type)
    assert UnitConcrete(tenant="t", value=1).tenant == "t"


@pytest.mark.parametrize("bad", ["", "   "])
def test_blank_type_name_is_rejected(bad: str) -> None:
    """A blank type name is a ValueError at class creation."""
    with pytest.raises(ValueError, match="must not be empty"):

        class Blank(Event, name=bad):
            value: int


@pytest.mark.parametrize(
    ("bad", "error"), [(0, ValueError), (-1, ValueError), (True, TypeError), ("2", TypeError)]
)
def test_invalid_schema_version_is_rejected(bad: object, error: type[Exception]) -> None:
    """A schema version below 1 is a ValueError, one that is no int a TypeError, at class
    creation (as for every int argument)."""
    with pytest.raises(error, match="event schema version must be"):

        class BadVersion(Event, name=unique("unit.BadVersion"), version=bad):  # type: ignore[arg-type]
            value: int


# -- instances ----------------------------------------------------------------------------


def test_event_id_defaults_to_a_new_time_ordered_uuid() -> None:
    """Each event gets a fresh UUIDv7 event_id unless one is given; later ids sort after."""
    a, b = Opened(owner="ann"), Opened(owner="ann")
    assert isinstance(a.event_id, uuid.UUID)
    assert a.event_id.version == 7
    assert a.event_id != b.event_id
    time.sleep(0.002)  # a later millisecond: its id sorts after, whatever the random bits
    assert Opened(owner="ann").event_id > a.event_id


def test_given_event_id_is_kept() -> None:
    """An event_id passed in (UUID or its text) is kept as given."""
    given = uuid.uuid4()
    assert Opened(owner="ann", event_id=given).event_id == given
    assert Opened(owner="ann", event_id=str(given)).event_id == given  # type: ignore[arg-type]


def test_events_are_frozen() -> None:
    """Assigning to a field of an event raises; the event is unchanged."""
    event = Deposited(amount=5)
    with pytest.raises(ValidationError):
        event.amount = 6  # type: ignore[misc]
    assert event.amount == 5


@pytest.mark.parametrize(
    ("cls", "payload"),
    [
        (Deposited, {"amount": "lots"}),
        (Deposited, {}),
        (Opened, {"owner": 123}),
        (Opened, {"owner": None}),
    ],
)
def test_invalid_payload_raises_validation_error(cls: type[Event], payload: dict) -> None:
    """Payloads of the wrong type or with missing fields raise pydantic's ValidationError."""
    with pytest.raises(ValidationError):
        cls(**payload)


def test_extra_fields_are_rejected() -> None:
    """Unknown fields are an error, not silently dropped."""
    with pytest.raises(ValidationError, match="extra"):
        Opened(owner="ann", nickname="a")  # type: ignore[call-arg]


# -- encoding -----------------------------------------------------------------------------


def test_encode_excludes_the_event_id() -> None:
    """The stored payload holds the fields only; the id is stored in its own column."""
    event = Opened(owner="ann")
    assert encode_event(event) == '{"owner":"ann"}'


def test_decode_round_trip() -> None:
    """decode_event(encode_event(e)) gives back an equal event with the same id."""
    event = Opened(owner="ann ☃ 'quoted' \"double\"")
    decoded = decode_event(
        Opened.event_type, Opened.schema_version, encode_event(event), str(event.event_id)
    )
    assert decoded == event
    assert type(decoded) is Opened
    assert decoded.event_id == event.event_id


def test_decode_postgres_rendered_json() -> None:
    """Payload text as PostgreSQL renders jsonb (with spaces) decodes too."""
    event_id = str(uuid.uuid4())
    decoded = decode_event("test.Deposited", 1, '{"amount": 7}', event_id)
    assert decoded == Deposited(amount=7, event_id=uuid.UUID(event_id))


def test_decode_empty_payload() -> None:
    """An event without fields stores {} and decodes back with its id."""

    class Pinged(Event, name=unique("unit.Pinged")):
        pass

    event = Pinged()
    assert encode_event(event) == "{}"
    decoded = decode_event(Pinged.event_type, 1, "{}", str(event.event_id))
    assert decoded == event


def test_decode_validates_the_payload() -> None:
    """A stored payload that does not fit the class raises EventDecodeError naming the field."""
    with pytest.raises(EventDecodeError, match=r"'test\.Deposited'.*amount: ") as info:
        decode_event("test.Deposited", 1, '{"amount": "many"}', str(uuid.uuid4()))
    assert isinstance(info.value, EventSourceError)
    assert isinstance(info.value.__cause__, ValidationError)
    assert "For further information" not in str(info.value)


def test_unknown_event_type_names_the_type() -> None:
    """Decoding an unregistered type raises UnknownEventType carrying the type name."""
    with pytest.raises(UnknownEventType) as info:
        decode_event("unit.NeverDefined", 1, "{}", str(uuid.uuid4()))
    assert info.value.event_type == "unit.NeverDefined"
    assert "unit.NeverDefined" in str(info.value)
    with pytest.raises(UnknownEventType, match=r"unit\.NeverDefined"):
        event_class("unit.NeverDefined")


# -- upcasting ----------------------------------------------------------------------------


def test_upcasters_chain_from_v1_to_v3() -> None:
    """A v1 payload passes through the v1→v2 and v2→v3 upcasters, in order."""
    name = unique("unit.Upcast")

    class Moved(Event, name=name, version=3):
        distance_m: int
        unit: str

    calls: list[int] = []

    @upcaster(Moved, from_version=1)
    def v1_to_v2(data: dict) -> dict:
        calls.append(1)
        return {"distance_km": data["km"]}

    @upcaster(name, from_version=2)
    def v2_to_v3(data: dict) -> dict:
        calls.append(2)
        return {"distance_m": data["distance_km"] * 1000, "unit": "m"}

    event_id = uuid.uuid4()
    decoded = decode_event(name, 1, '{"km": 3}', str(event_id))
    assert decoded == Moved(distance_m=3000, unit="m", event_id=event_id)
    assert calls == [1, 2]

    calls.clear()
    from_v2 = decode_event(name, 2, '{"distance_km": 2}', str(event_id))
    assert isinstance(from_v2, Moved)
    assert from_v2.distance_m == 2000
    assert calls == [2]

    calls.clear()
    current = decode_event(name, 3, '{"distance_m": 5, "unit": "m"}', str(event_id))
    assert isinstance(current, Moved)
    assert current.distance_m == 5
    assert calls == []


def test_missing_upcaster_raises_upcast_error() -> None:
    """A gap in the upcaster chain raises UpcastError naming the missing step."""
    name = unique("unit.Gap")

    class Gap(Event, name=name, version=3):
        value: int

    @upcaster(Gap, from_version=2)
    def v2_to_v3(data: dict) -> dict:
        return data

    with pytest.raises(UpcastError, match="from version 1 to 2"):
        decode_event(name, 1, '{"value": 1}', str(uuid.uuid4()))


def test_stored_newer_version_raises_upcast_error() -> None:
    """A payload stored by newer code (higher schema version) cannot be read: UpcastError."""
    name = unique("unit.Newer")

    class Newer(Event, name=name, version=2):
        value: int

    with pytest.raises(UpcastError, match="newer"):
        decode_event(name, 3, '{"value": 1}', str(uuid.uuid4()))


def test_second_upcaster_for_one_step_is_rejected() -> None:
    """Two different upcasters for one (type, version) step are a TypeError."""
    name = unique("unit.TwoUp")

    class TwoUp(Event, name=name, version=2):
        value: int

    def first(data: dict) -> dict:
        return data

    def second(data: dict) -> dict:
        return data

    upcaster(TwoUp, from_version=1)(first)
    upcaster(TwoUp, from_version=1)(first)  # the same function again is harmless
    with pytest.raises(TypeError, match="already registered"):
        upcaster(TwoUp, from_version=1)(second)


def test_upcast_errors_are_eventsource_errors() -> None:
    """UpcastError and UnknownEventType share the package's root exception."""
    assert issubclass(UpcastError, EventSourceError)
    assert issubclass(UnknownEventType, EventSourceError)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "match"),
    [("a\x00b", "event type name must not contain a NUL"), ("x\udcff", "not valid UTF-8")],
)
def test_type_names_that_cannot_be_stored_are_rejected(bad: str, match: str) -> None:
    """A type name with NUL or a lone surrogate is a ValueError at class creation."""
    with pytest.raises(ValueError, match=match):

        class Unstorable(Event, name=bad):
            value: int

    assert not is_registered(bad)


def test_schema_version_beyond_an_integer_column_is_rejected() -> None:
    """A schema version over PostgreSQL's integer range is refused at class creation."""
    with pytest.raises(ValueError, match="event schema version must be from 1 to 2147483647"):

        class Huge(Event, name=unique("unit.Huge"), version=2**31):
            value: int


@pytest.mark.parametrize(
    ("target", "from_version", "error", "match"),
    [
        ("", 1, ValueError, "event type name must not be empty"),
        ("unit.X", 0, ValueError, "from_version must be from 1"),
        ("unit.X", True, TypeError, "from_version must be an int"),
        (42, 1, TypeError, "registered Event class or type name"),
    ],
)
def test_upcaster_arguments_are_checked(
    target: object, from_version: object, error: type[Exception], match: str
) -> None:
    """@upcaster names a bad type or version when it is applied, not when a payload is read."""
    with pytest.raises(error, match=match):
        upcaster(target, from_version=from_version)  # type: ignore[arg-type]


def test_a_failing_upcaster_is_an_upcast_error_naming_it() -> None:
    """An upcaster that raises (or returns no dict) gives UpcastError naming the step."""
    name = unique("unit.Fragile")

    class Fragile(Event, name=name, version=2):
        value: int

    @upcaster(Fragile, from_version=1)
    def _broken(data: dict) -> dict:
        return {"value": data["missing"]}

    with pytest.raises(UpcastError, match=r"from version 1 to 2 .*_broken.* KeyError") as info:
        decode_event(name, 1, '{"old": 1}', str(uuid.uuid4()))
    assert isinstance(info.value.__cause__, KeyError)

    _events._upcasters.clear()

    @upcaster(Fragile, from_version=1)
    def _not_a_dict(data: dict) -> dict:
        return [1]  # type: ignore[return-value]

    with pytest.raises(UpcastError, match="returned list, not a dict"):
        decode_event(name, 1, '{"old": 1}', str(uuid.uuid4()))


def test_an_upcast_payload_that_does_not_fit_is_an_event_decode_error() -> None:
    """A payload that upcasts but does not validate is an EventDecodeError, not pydantic's."""
    name = unique("unit.Upcast")

    class Upcast(Event, name=name, version=2):
        value: int

    upcaster(Upcast, from_version=1)(lambda data: {"value": "not a number"})
    with pytest.raises(EventDecodeError, match=r"schema version 1\) cannot be decoded: value:"):
        decode_event(name, 1, "{}", str(uuid.uuid4()))
    with pytest.raises(EventDecodeError, match="JSONDecodeError"):
        decode_event(name, 1, "{not json", str(uuid.uuid4()))
