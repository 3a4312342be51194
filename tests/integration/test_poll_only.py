"""Behind PgBouncer in transaction mode: no LISTEN (poll-only) and no server-side prepares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from eventsource import (
    Command,
    CommandContext,
    CommandQueue,
    CommandWorker,
    EventStore,
    Settings,
)
from eventsource.commands import HandlerSpec


class Tick(Command, name="test.poll_only.Tick"):
    n: int


@pytest.fixture
def unprepared(database_url: str, store: EventStore) -> Iterator[EventStore]:
    """A second store on the test's (upgraded) schema with prepared statements off."""
    with EventStore.from_url(database_url, schema=store.schema, prepared_statements=False) as plain:
        yield plain


def test_a_poll_only_worker_without_prepared_statements_runs_every_command(
    unprepared: EventStore,
) -> None:
    """Enqueue, claim, ack and ctx.tx all work, and no session prepared a statement."""
    prepared: list[int] = []

    def tick(command: Tick, ctx: CommandContext) -> None:
        count = ctx.tx.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar()
        prepared.append(int(count or 0))

    queue = CommandQueue(unprepared)
    for n in range(20):  # far past psycopg's threshold of 2 executions
        queue.enqueue(Tick(n=n))
    worker = CommandWorker(
        unprepared,
        concurrency=2,
        listen=False,
        poll_interval=0.05,
        handlers={Tick.command_type: HandlerSpec(Tick, tick, False, None)},
    )
    worker.run(stop_when_idle=True)
    assert len(prepared) == 20
    assert set(prepared) == {0}
    assert queue.list() == []


def test_prepared_statements_follow_the_setting(
    monkeypatch: pytest.MonkeyPatch, database_url: str, store: EventStore
) -> None:
    """EVENTSOURCE_PREPARED_STATEMENTS=false reaches the store made by from_env."""
    monkeypatch.setenv("EVENTSOURCE_PREPARED_STATEMENTS", "false")
    settings = Settings(database_url=database_url, db_schema=store.schema)
    assert settings.prepared_statements is False
    with EventStore.from_env(settings) as plain:
        assert plain.prepared_statements is False
        with plain.engine.connect() as conn:
            assert conn.connection.driver_connection.prepare_threshold is None  # type: ignore[union-attr]
    assert store.prepared_statements is True
