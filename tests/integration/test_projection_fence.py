"""A session that holds a partition's checkpoint locked past its lease, waiting for a client
that does not speak (a worker frozen between the statements of a batch), is ended by the
worker whose share the partition is; the partition is then claimed and caught up."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from eventsource import EventStore, partition_for
from eventsource.db import conninfo
from eventsource.testing import run_projections
from tests.domain import Opened
from tests.integration._support import sql
from tests.projection_domain import StreamsSeen

TTL = 0.5


class Seen(StreamsSeen):
    """Notes the streams it got, in memory."""

    name = "test.fence"


def zombie(store: EventStore, partition: int, lease: float = -60) -> psycopg.Connection[Any]:
    """A session of a worker 'zombie' that holds the checkpoint of ``partition`` locked in a
    transaction, with no timeout to end it; its lease runs out ``lease`` seconds from now
    (by default it ran out a minute ago)."""
    sql(
        store,
        "UPDATE {s}.projection_checkpoints SET owner = 'zombie', lease_token = lease_token + 1,"
        " lease_until = clock_timestamp() + make_interval(secs => :lease)"
        " WHERE projection = :name AND partition = :partition",
        {"name": Seen.name, "partition": partition, "lease": lease},
    )
    conn = psycopg.connect(conninfo(store.url))
    conn.execute("SET idle_in_transaction_session_timeout = 0")
    conn.execute(
        f'SELECT position FROM "{store.schema}".projection_checkpoints'
        " WHERE projection = %s AND partition = %s FOR UPDATE",
        (Seen.name, partition),
    )
    return conn


def test_a_frozen_session_holding_a_partition_past_its_lease_is_ended(store: EventStore) -> None:
    run_projections(store, [Seen()])  # the checkpoints exist, every partition at 0
    stream = "acc-frozen"
    partition = partition_for(stream, store.partitions)
    frozen = zombie(store, partition)
    time.sleep(TTL * 2)  # it has waited for its client longer than a TTL
    store.append(stream, [Opened(owner="ann")])

    seen = Seen()
    run_projections(store, [seen], timeout=15, lease_ttl=TTL, heartbeat_interval=0.1)

    assert seen.streams == [stream]
    with pytest.raises(psycopg.OperationalError):
        frozen.execute("SELECT 1")
    frozen.close()


def test_a_session_inside_its_lease_is_left_alone(store: EventStore) -> None:
    """A lock held by a worker whose lease is still running is not a frozen worker's."""
    run_projections(store, [Seen()])
    partition = partition_for("acc-live", store.partitions)
    holder = zombie(store, partition, lease=3600)
    time.sleep(TTL * 2)
    store.append("acc-live", [Opened(owner="bob")])
    with pytest.raises(TimeoutError):
        run_projections(store, [Seen()], timeout=2, lease_ttl=TTL, heartbeat_interval=0.1)
    assert holder.execute("SELECT 1").fetchone() == (1,)
    holder.close()
