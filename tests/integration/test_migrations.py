"""Schema lifecycle: migrations, status, partition counts and connection failures.

That the migrated schema is the one eventsource/db/schema.sql describes: test_schema.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import text

from eventsource import (
    ANY,
    NO_STREAM,
    ConcurrencyError,
    DatabaseUnavailable,
    EventStore,
    SchemaNotReady,
    partition_for,
)
from eventsource.db import (
    VERSION_TABLE,
    _migrate,
    conninfo,
    head_revision,
    quote_schema,
    upgrade_schema,
)
from tests.domain import Deposited, Opened

from ._support import assert_dense, sql
from .test_races import keys_in_two_partitions, race
from .test_schema import catalog_diff, read_catalog, schema_sql


@pytest.fixture
def bare_store(database_url: str, schema: str) -> Iterator[EventStore]:
    """A store on a fresh schema that has not been upgraded."""
    store = EventStore.from_url(database_url, schema=schema, partitions=4)
    yield store
    store.close()


def test_upgrade_twice_is_a_no_op(store: EventStore) -> None:
    """A second upgrade changes nothing: same revision, partitions, heads, events and catalog."""
    store.append("s", [Opened(owner="a")])
    catalog = read_catalog(store.engine.url, store.schema)
    before = (store.status(), store.heads(), store.read_stream("s"))
    store.upgrade()
    store.upgrade()
    after = (store.status(), store.heads(), store.read_stream("s"))
    assert before[0] == after[0]
    assert before[1] == after[1]
    assert [r.event for r in before[2]] == [r.event for r in after[2]]
    assert sql(store, "SELECT count(*) FROM {s}.partitions") == [(4,)]
    assert sql(store, "SELECT count(*) FROM {s}." + VERSION_TABLE) == [(1,)]
    diff = catalog_diff(catalog, read_catalog(store.engine.url, store.schema), ("once", "thrice"))
    assert not diff, diff


def test_status_reports_revision_head_and_partitions(store: EventStore) -> None:
    """status() of an upgraded schema: at the head revision, with its partition count."""
    status = store.status()
    assert status.schema == store.schema
    assert status.revision == status.head == head_revision() == "0007"
    assert status.partitions == 4
    assert status.up_to_date


def test_status_of_a_schema_never_upgraded(bare_store: EventStore) -> None:
    """status() of a missing schema: no revision, no partitions, not up to date."""
    status = bare_store.status()
    assert status.revision is None
    assert status.partitions is None
    assert status.head == head_revision()
    assert not status.up_to_date


def test_concurrent_upgrades_of_a_fresh_schema(database_url: str, schema: str) -> None:
    """Four threads upgrading one new schema at once all succeed and create it once."""
    stores = [EventStore.from_url(database_url, schema=schema, partitions=4) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def upgrade(store: EventStore) -> None:
        try:
            barrier.wait()
            store.upgrade()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(s,)) for s in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert [s.partitions for s in stores] == [4, 4, 4, 4]
        first = stores[0]
        assert sql(first, "SELECT partition, head FROM {s}.partitions ORDER BY 1") == [
            (0, 0),
            (1, 0),
            (2, 0),
            (3, 0),
        ]
        assert sql(first, "SELECT key, value FROM {s}.meta") == [("partitions", "4")]
        assert sql(first, "SELECT version_num FROM {s}." + VERSION_TABLE) == [(head_revision(),)]
        assert first.status().up_to_date
    finally:
        for store in stores:
            store.close()


def test_concurrent_upgrades_agree_on_one_partition_count(database_url: str, schema: str) -> None:
    """Racing first upgrades with different counts: the first one wins, all see its count."""
    counts = [2, 4, 8, 16]
    stores = [EventStore.from_url(database_url, schema=schema, partitions=n) for n in counts]
    barrier = threading.Barrier(len(stores))
    threads = [threading.Thread(target=lambda s=s: (barrier.wait(), s.upgrade())) for s in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        seen = {s.partitions for s in stores}
        assert len(seen) == 1
        (count,) = seen
        assert count in counts
        assert sql(stores[0], "SELECT count(*) FROM {s}.partitions") == [(count,)]
    finally:
        for store in stores:
            store.close()


def test_partition_count_is_fixed_at_creation(store: EventStore, database_url: str) -> None:
    """A later store asking for 8 partitions on a 4-partition schema still gets 4."""
    other = EventStore.from_url(database_url, schema=store.schema, partitions=8)
    try:
        assert other.partitions == 4  # read from the database before any upgrade
        other.upgrade()
        assert other.partitions == 4
        assert other.status().partitions == 4
        assert len(other.heads()) == 4
        with pytest.raises(ValueError, match=r"0\.\.3"):
            other.read_partition(5)
        result = other.append("s", [Opened(owner="a")])
        assert 0 <= result.partition < 4
    finally:
        other.close()


def test_append_to_a_schema_never_upgraded(bare_store: EventStore) -> None:
    """Using a schema that was never upgraded raises SchemaNotReady naming it."""
    with pytest.raises(SchemaNotReady) as info:
        bare_store.append("s", [Opened(owner="a")])
    assert info.value.schema == bare_store.schema
    assert "eventsource db upgrade" in str(info.value)
    with pytest.raises(SchemaNotReady):
        bare_store.read_stream("s")
    with pytest.raises(SchemaNotReady):
        bare_store.heads()
    with pytest.raises(SchemaNotReady):
        _ = bare_store.partitions


def test_upgrade_after_schema_not_ready_makes_it_usable(bare_store: EventStore) -> None:
    """A failed use leaves nothing behind that stops a later upgrade."""
    with pytest.raises(SchemaNotReady):
        bare_store.append("s", [Opened(owner="a")])
    bare_store.upgrade()
    assert bare_store.append("s", [Opened(owner="a")]).stream_version == 1


def test_schema_created_in_an_existing_empty_schema(bare_store: EventStore) -> None:
    """upgrade() works when the schema exists but holds no tables yet."""
    with bare_store.engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {quote_schema(bare_store.schema)}"))
    bare_store.upgrade()
    assert bare_store.status().up_to_date


def test_unreachable_server_raises_database_unavailable(schema: str) -> None:
    """A server that refuses connections gives DatabaseUnavailable naming host and database."""
    store = EventStore.from_url(
        "postgresql://postgres:s3cr3t@127.0.0.1:1/test", schema=schema, partitions=4
    )
    try:
        for call in (
            store.upgrade,
            store.status,
            lambda: store.append("s", [Opened(owner="a")]),
            lambda: store.read_stream("s"),
        ):
            with pytest.raises(DatabaseUnavailable) as info:
                call()
            message = str(info.value)
            assert "127.0.0.1" in message
            assert "/test" in message
            assert "s3cr3t" not in message
            assert info.value.where == "127.0.0.1:1/test"
    finally:
        store.close()


def test_store_arguments_are_checked(database_url: str) -> None:
    """Invalid partition counts and schema names are rejected before connecting."""
    with pytest.raises(ValueError, match="partitions"):
        EventStore.from_url(database_url, schema="ok", partitions=0)
    with pytest.raises(ValueError, match="invalid schema name"):
        EventStore.from_url(database_url, schema='x"; DROP SCHEMA public; --')
    with pytest.raises(ValueError, match="needs PostgreSQL"):
        EventStore.from_url("mysql://u@h/db")


def test_upgrade_from_0003_keeps_every_stream_where_it_was(bare_store: EventStore) -> None:
    """Streams written before 0004 (with their stream rows) keep their versions and partitions:
    appends continue them, conflicts see them, and positions stay dense."""
    store = bare_store
    with store.engine.connect() as conn:
        upgrade_schema(conn, store.schema, 4, revision="0003")
    a_partition = partition_for("a", 4)
    b_partition = (partition_for("b", 4) + 1) % 4  # as if written under another partition key
    sql(
        store,
        "SELECT * FROM {s}.append_events(ARRAY['a', 'b'], CAST(:parts AS int[]),"
        " ARRAY[-1, -1]::bigint[], ARRAY[2, 1], ARRAY[gen_random_uuid(), gen_random_uuid(),"
        " gen_random_uuid()], ARRAY['test.Opened', 'test.Deposited', 'test.Opened'],"
        ' ARRAY[1, 1, 1], ARRAY[\'{{"owner": "ann"}}\', \'{{"amount": 5}}\','
        " '{{\"owner\": \"bob\"}}'], ARRAY['{{}}', '{{}}', '{{}}'])",
        {"parts": [a_partition, b_partition]},
    )
    assert sql(store, "SELECT stream_id, version FROM {s}.streams ORDER BY 1") == [
        ("a", 2),
        ("b", 1),
    ]

    store.upgrade()
    assert store.status().revision == head_revision()
    assert store.stream_version("a") == 2
    result = store.append("a", [Deposited(amount=1)], 2)
    assert (result.stream_version, result.partition) == (3, a_partition)
    result = store.append("b", [Deposited(amount=2)])  # its own key would say another partition
    assert (result.stream_version, result.partition) == (2, b_partition)
    with pytest.raises(ConcurrencyError) as info:
        store.append("b", [Opened(owner="x")], NO_STREAM)
    assert (info.value.expected, info.value.actual) == (NO_STREAM, 2)
    assert [type(r.event).__name__ for r in store.read_stream("a")] == [
        "Opened",
        "Deposited",
        "Deposited",
    ]
    assert assert_dense(store) == 5


def test_the_stream_id_check_is_added_without_a_scan_and_validated_after(
    bare_store: EventStore,
) -> None:
    """0004 adds its CHECK NOT VALID (no scan under its exclusive lock); the upgrade then
    validates it in a transaction of its own, with appends and reads going on."""
    store = bare_store
    with store.engine.connect() as conn:
        upgrade_schema(conn, store.schema, 4, revision="0003")
    with store.engine.connect() as conn:
        # Up to 0004 alone, without the step that follows the migrations.
        cfg = _migrate._config()
        cfg.attributes.update(
            connection=conn, schema=store.schema, version_table=_migrate.VERSION_TABLE
        )
        command.upgrade(cfg, "0004")
        conn.commit()
    validated = (
        "SELECT c.convalidated FROM pg_constraint c JOIN pg_namespace n"
        " ON n.oid = c.connamespace WHERE n.nspname = :s AND c.conname = 'events_stream_id_length'"
    )
    assert sql(store, validated, {"s": store.schema}) == [(False,)]
    store.upgrade()
    assert sql(store, validated, {"s": store.schema}) == [(True,)]


def test_upgrade_from_0005_to_0006_replaces_the_append_function(bare_store: EventStore) -> None:
    """A schema at 0005 with streams in it, upgraded: the catalog that schema.sql describes,
    its streams go on, and its append function reports a creation race under another
    partition key itself (an appends-only transaction then goes after the creator)."""
    store = bare_store
    with store.engine.connect() as conn:
        upgrade_schema(conn, store.schema, 4, revision="0005")
    assert store.status().revision == "0005"
    store.append("a", [Opened(owner="a")], NO_STREAM)

    store.upgrade()
    assert store.status().revision == head_revision() == "0007"
    scripted = f"{store.schema}_sql"  # dropped with the test's schema
    with psycopg.connect(conninfo(store.url)) as conn:
        conn.execute(schema_sql(scripted).encode())
    diff = catalog_diff(
        read_catalog(store.engine.url, scripted),
        read_catalog(store.engine.url, store.schema),
        ("eventsource/db/schema.sql", "upgraded from 0005"),
    )
    assert not diff, diff
    assert store.append("a", [Deposited(amount=1)], 1).stream_version == 2

    first, other = keys_in_two_partitions()

    def appends_only() -> Any:
        with store.transaction() as tx:
            x = store.append("x", [Deposited(amount=1)], ANY, partition_key=other, tx=tx)
            store.append("y", [Opened(owner="y")], NO_STREAM, partition_key=other, tx=tx)
        return x.result

    _, (outcome,) = race(
        store,
        lambda tx: store.append("x", [Opened(owner="x")], NO_STREAM, partition_key=first, tx=tx),
        appends_only,
    )
    assert "error" not in outcome, outcome
    assert (outcome["result"].stream_version, outcome["result"].partition) == (
        2,
        partition_for(first, 4),
    )
    assert assert_dense(store) == 5
