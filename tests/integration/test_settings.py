"""Stores built by ``from_url`` and ``from_env`` read the same settings, on a real server."""

from __future__ import annotations

import pytest

from eventsource import AsyncEventStore, EventStore, Settings

_SETTINGS_ENV = (
    "EVENTSOURCE_SCHEMA",
    "EVENTSOURCE_PARTITIONS",
    "EVENTSOURCE_POOL_SIZE",
    "EVENTSOURCE_PREPARED_STATEMENTS",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without the store settings (the database URL is kept)."""
    for name in _SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _shape(store: EventStore | AsyncEventStore) -> tuple[str, int, int, bool]:
    """What a store was configured with: schema, initial partitions, pool size, preparing."""
    return (
        store.schema,
        store._initial_partitions,
        store._pool_size,
        store.prepared_statements,
    )


@pytest.mark.parametrize("cls", [EventStore, AsyncEventStore], ids=lambda c: c.__name__)
def test_from_url_reads_the_environment_as_from_env_does(
    env: pytest.MonkeyPatch, database_url: str, schema: str, cls: type[EventStore]
) -> None:
    """Settings not given to from_url come from EVENTSOURCE_*, as with from_env."""
    env.setenv("EVENTSOURCE_SCHEMA", schema)
    env.setenv("EVENTSOURCE_PARTITIONS", "3")
    env.setenv("EVENTSOURCE_POOL_SIZE", "2")
    env.setenv("EVENTSOURCE_PREPARED_STATEMENTS", "false")
    by_url = cls.from_url(database_url)
    by_env = cls.from_env(Settings(database_url=database_url))
    assert _shape(by_url) == _shape(by_env) == (schema, 3, 2, False)


@pytest.mark.parametrize("cls", [EventStore, AsyncEventStore], ids=lambda c: c.__name__)
def test_from_url_arguments_win_over_the_environment(
    env: pytest.MonkeyPatch, database_url: str, schema: str, cls: type[EventStore]
) -> None:
    """Explicit arguments of from_url override the EVENTSOURCE_* variables."""
    env.setenv("EVENTSOURCE_SCHEMA", "not_this_one")
    env.setenv("EVENTSOURCE_PARTITIONS", "3")
    env.setenv("EVENTSOURCE_POOL_SIZE", "2")
    env.setenv("EVENTSOURCE_PREPARED_STATEMENTS", "false")
    store = cls.from_url(
        database_url, schema=schema, partitions=5, pool_size=4, prepared_statements=True
    )
    assert _shape(store) == (schema, 5, 4, True)


@pytest.mark.parametrize("cls", [EventStore, AsyncEventStore], ids=lambda c: c.__name__)
def test_from_url_defaults_without_environment(
    env: pytest.MonkeyPatch, database_url: str, cls: type[EventStore]
) -> None:
    """Without EVENTSOURCE_* settings, from_url uses the documented defaults."""
    assert _shape(cls.from_url(database_url)) == ("eventsource", 16, 10, True)


def test_partitions_from_the_environment_shape_the_new_schema(
    env: pytest.MonkeyPatch, database_url: str, schema: str
) -> None:
    """EVENTSOURCE_PARTITIONS decides the partition count of a schema created by from_url."""
    env.setenv("EVENTSOURCE_PARTITIONS", "3")
    with EventStore.from_url(database_url, schema=schema) as store:
        store.upgrade()
        assert store.partitions == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"partitions": 0}, ValueError, "partitions"),
        ({"pool_size": 0}, ValueError, "pool_size"),
        ({"schema": "a-b"}, ValueError, "invalid schema name 'a-b'"),
        ({"prepared_statements": "yes"}, TypeError, "prepared_statements"),
    ],
)
def test_from_url_names_a_bad_argument_over_a_good_environment(
    env: pytest.MonkeyPatch,
    database_url: str,
    kwargs: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    """A bad argument is named as the argument, even when its variable is fine."""
    env.setenv("EVENTSOURCE_PARTITIONS", "3")
    with pytest.raises(error, match=match) as info:
        EventStore.from_url(database_url, **kwargs)  # type: ignore[arg-type]
    assert "EVENTSOURCE_" not in str(info.value)


def test_from_url_names_a_bad_variable(env: pytest.MonkeyPatch, database_url: str) -> None:
    """A bad EVENTSOURCE_* variable that from_url reads is named in its error."""
    env.setenv("EVENTSOURCE_POOL_SIZE", "0")
    with pytest.raises(ValueError, match=r"^EVENTSOURCE_POOL_SIZE"):
        EventStore.from_url(database_url)
    assert EventStore.from_url(database_url, pool_size=1)._pool_size == 1
