"""/metrics scraped and checked against the database: every figure as SQL computes it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventsource import NO_STREAM, CommandQueue, EventStore
from eventsource.ops import ops_app
from projections import Projection, ProjectionWorker
from tests.domain import Opened
from tests.integration._ops_support import FAST, Fragile, Notify, TestClient, make_trouble
from tests.integration._support import sql

Samples = list[tuple[str, dict[str, str], float]]


def scrape(client: TestClient) -> Samples:
    """Every sample of /metrics: name, labels, value."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    ]


def of(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of one metric, by the values of ``labels``."""
    return {tuple(lv[k] for k in labels): v for n, lv, v in samples if n == name}


@pytest.fixture
def worker(store: EventStore) -> Iterator[ProjectionWorker]:
    """A live projection worker of another projection (it heartbeats; the figure counts it)."""

    class Other(Projection):
        name = "ops.other"

    w = ProjectionWorker(store, [Other()], **{k: v for k, v in FAST.items() if k != "max_attempts"})
    thread = threading.Thread(target=w.run)
    thread.start()
    deadline = time.monotonic() + 10
    query = "SELECT count(*) FROM {s}.projection_checkpoints WHERE projection = 'ops.other'"
    while sql(store, query)[0][0] < store.partitions:
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.05)
    yield w
    w.stop()
    thread.join(10)


def test_metrics_match_the_database(store: EventStore, worker: ProjectionWorker) -> None:
    """Heads, lag (events and seconds), stopped partitions, commands by queue and state, the
    oldest due command, dead letters and live workers are what the tables say."""
    trouble = make_trouble(store)
    queue = CommandQueue(store)
    for i in range(3):
        queue.enqueue(Notify(text=str(i)), queue="mail")
    queue.enqueue(Notify(text="later"), queue="later", delay=3600)
    time.sleep(0.3)
    for i in range(2):  # more events after the worker caught up: lag for ops.fragile
        store.append(f"late-{i}", [Opened(owner="x")], expected_version=NO_STREAM)
    caught_up = (
        "SELECT count(*) FROM {s}.projection_checkpoints c JOIN {s}.partitions p"
        " USING (partition) WHERE c.projection = 'ops.other' AND c.position < p.head"
    )
    deadline = time.monotonic() + 10
    while sql(store, caught_up)[0][0]:  # the live worker's figures then stand still
        assert time.monotonic() < deadline, "the live worker did not catch up"
        time.sleep(0.05)

    with TestClient(ops_app(store, read_only=True)) as client:
        samples = scrape(client)

    heads = dict(sql(store, "SELECT partition, head FROM {s}.partitions"))
    counted = dict(sql(store, "SELECT partition, count(*) FROM {s}.events GROUP BY partition"))
    appended = of(samples, "eventsource_events_appended_total", "partition")
    assert appended == {(str(p),): float(h) for p, h in heads.items()}
    assert {int(p): int(v) for (p,), v in appended.items() if v} == counted

    rows = sql(
        store,
        "SELECT c.projection, c.partition, p.head - c.position,"
        " extract(epoch FROM now() - e.recorded_at), c.error IS NOT NULL"
        " FROM {s}.projection_checkpoints c JOIN {s}.partitions p USING (partition)"
        " LEFT JOIN {s}.events e ON e.partition = c.partition AND e.position = c.position + 1",
    )
    lag = of(samples, "eventsource_projection_lag_events", "projection", "partition")
    lag_s = of(samples, "eventsource_projection_lag_seconds", "projection", "partition")
    for name, partition, behind, age, _ in rows:
        assert lag[(name, str(partition))] == behind
        if behind:
            assert abs(lag_s[(name, str(partition))] - float(age)) < 2.0
        else:
            assert lag_s[(name, str(partition))] == 0
    assert sum(lag.values()) >= 2
    stopped = of(samples, "eventsource_projection_partitions_stopped", "projection")
    assert stopped[(Fragile.name,)] == 1
    assert stopped[("ops.other",)] == 0
    assert trouble.partition in [p for n, p, _, _, err in rows if err and n == Fragile.name]

    by_state = {
        (q, s): n
        for q, s, n in sql(store, "SELECT queue, status, count(*) FROM {s}.commands GROUP BY 1, 2")
    }
    commands = of(samples, "eventsource_commands", "queue", "status")
    for (q, s), n in by_state.items():
        assert commands[(q, s)] == n
    assert commands[("mail", "pending")] == 3 and commands[("mail", "dead")] == 1
    assert of(samples, "eventsource_dead_letters", "queue") == {("later",): 0.0, ("mail",): 1.0}

    oldest = of(samples, "eventsource_command_oldest_due_age_seconds", "queue")
    (age,) = sql(
        store,
        "SELECT extract(epoch FROM now() - min(run_at)) FROM {s}.commands"
        " WHERE status = 'pending' AND queue = 'mail' AND run_at <= now()",
    )[0]
    assert abs(oldest[("mail",)] - float(age)) < 2.0 and oldest[("mail",)] >= 0.3
    assert oldest[("later",)] == 0  # delayed, not due: it has not waited yet

    live = sql(
        store,
        "SELECT count(*) FROM {s}.projection_workers WHERE heartbeat_at > now() - interval '15 s'",
    )[0][0]
    assert of(samples, "eventsource_live_workers", "kind") == {
        ("projection",): live,
        ("command",): 0.0,
    }
    assert live == 1


def test_every_metric_has_help_and_type(store: EventStore) -> None:
    """The exposition is valid Prometheus text on an empty store too."""
    with TestClient(ops_app(store, read_only=True)) as client:
        text = client.get("/metrics").text
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert "eventsource_events_appended" in names or "eventsource_events_appended_total" in names
    for name in names:
        assert f"# HELP {name} " in text
    assert "postgres" not in text  # no URL, no secret
