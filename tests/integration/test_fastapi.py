"""The FastAPI integration against a real store: lifespan, repositories as dependencies,
retried updates under concurrency, read-your-writes through the token header, event JSON
with type names, and the framework's errors as problem responses."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run
# time, and some of them are aliases local to make_app.
import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Response
from sqlalchemy import Connection

from eventsource import (
    AggregateNotFound,
    AsyncEventStore,
    AsyncRepository,
    ConcurrencyError,
    RecordedEvent,
)
from eventsource.fastapi import TOKEN_HEADER, EventSourcing, event_out
from projections import Projection, handles
from tests.domain import Counter, Deposited, Opened


class Totals(Projection):
    """Each counter's total, in memory (the read side of the test service)."""

    name = "test.fastapi.totals"

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}

    @handles(Deposited)
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        self.totals[record.stream_id] = self.totals.get(record.stream_id, 0) + event.amount


def make_app(
    database_url: str, schema: str, totals: Totals | None = None
) -> tuple[FastAPI, EventSourcing]:
    """A small service over Counter aggregates (with ``totals`` run in-process if given)."""
    es = EventSourcing(
        database_url, schema=schema, partitions=4, projections=[totals] if totals else []
    )
    app = FastAPI(lifespan=es.lifespan)
    es.install(app)
    counters = Annotated[AsyncRepository[Counter], Depends(es.repository(Counter))]
    store = Annotated[AsyncEventStore, Depends(es.get_store)]

    @app.post("/counters/{counter_id}")
    async def open_counter(counter_id: str, repo: counters, response: Response) -> dict[str, Any]:
        counter = Counter(counter_id)
        counter.open("ann")
        es.set_token(response, await repo.save(counter))
        return {"id": counter_id}

    @app.post("/counters/{counter_id}/add/{amount}")
    async def add(
        counter_id: str, amount: int, repo: counters, response: Response
    ) -> dict[str, Any]:
        result = await repo.update(counter_id, lambda c: c.add(amount), retries=50)
        es.set_token(response, result)
        return {"version": result.stream_version if result else None}

    @app.get("/counters/{counter_id}")
    async def get(counter_id: str, repo: counters) -> dict[str, Any]:
        counter = await repo.load(counter_id)
        return {"total": counter.total, "version": counter.version}

    @app.get("/counters/{counter_id}/history")
    async def history(counter_id: str, store: store) -> list[dict[str, Any]]:
        return [event_out(r).model_dump(mode="json") for r in await store.read_stream(counter_id)]

    @app.get("/totals/{counter_id}", dependencies=[Depends(es.consistent(Totals.name))])
    async def total(counter_id: str) -> dict[str, Any]:
        return {"total": totals.totals.get(counter_id, 0) if totals else None}

    @app.get("/stale", dependencies=[Depends(es.consistent("never.runs", timeout=0.2))])
    async def stale() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/conflict")
    async def conflict() -> None:
        raise ConcurrencyError("c-9", 3, 5)

    return app, es


@pytest.fixture
async def client(database_url: str, schema: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app, its lifespan running."""
    app, _ = make_app(database_url, schema)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_writes_reads_and_history_with_type_names(client: httpx.AsyncClient) -> None:
    """A counter opened and added to reads back; its history names each event's type."""
    opened = await client.post("/counters/c-1")
    assert opened.status_code == 200
    assert opened.headers[TOKEN_HEADER].startswith("p1:")
    assert (await client.post("/counters/c-1/add/5")).json() == {"version": 2}
    assert (await client.get("/counters/c-1")).json() == {"total": 5, "version": 2}
    history = (await client.get("/counters/c-1/history")).json()
    assert [e["type"] for e in history] == [Opened.event_type, Deposited.event_type]
    assert history[1]["data"] == {"amount": 5}
    assert [e["stream_version"] for e in history] == [1, 2]


async def test_twenty_concurrent_adds_all_succeed(client: httpx.AsyncClient) -> None:
    """Twenty concurrent adds to one counter all succeed (update retries its conflicts)."""
    await client.post("/counters/c-2")
    replies = await asyncio.gather(*(client.post("/counters/c-2/add/1") for _ in range(20)))
    assert [r.status_code for r in replies] == [200] * 20
    assert (await client.get("/counters/c-2")).json() == {"total": 20, "version": 21}


async def test_errors_are_problem_responses(client: httpx.AsyncClient) -> None:
    """Not found is 404, a conflict 409, a bad token 422 and a wait that times out 504, each
    with a JSON problem body naming the error."""
    missing = await client.get("/counters/nobody")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    body = missing.json()
    assert body["status"] == 404
    assert body["error"] == AggregateNotFound.__name__
    assert body["aggregate_id"] == "nobody"
    conflict = await client.get("/conflict")
    assert conflict.status_code == 409
    assert (conflict.json()["stream_id"], conflict.json()["actual"]) == ("c-9", 5)
    bad = await client.get("/stale", headers={TOKEN_HEADER: "not-a-token"})
    assert bad.status_code == 422
    assert "malformed position token" in bad.json()["detail"]
    token = (await client.post("/counters/c-3")).headers[TOKEN_HEADER]
    late = await client.get("/stale", headers={TOKEN_HEADER: token})
    assert late.status_code == 504
    assert late.json()["error"] == "ProjectionTimeout"
    assert (await client.get("/stale")).json() == {"ok": "yes"}  # no token: no wait


async def test_a_read_after_a_write_sees_it_through_the_token(
    database_url: str, schema: str
) -> None:
    """With the projection running in the app, a read that carries the write's token waits
    until the read model has applied the write."""
    totals = Totals()
    app, _ = make_app(database_url, schema, totals)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            await http.post("/counters/c-4")
            for amount in (1, 2, 3):
                token = (await http.post(f"/counters/c-4/add/{amount}")).headers[TOKEN_HEADER]
                reply = await http.get("/totals/c-4", headers={TOKEN_HEADER: token})
                assert reply.status_code == 200
                assert reply.json()["total"] == sum(range(1, amount + 1))
