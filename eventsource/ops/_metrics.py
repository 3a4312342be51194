"""``/metrics``: the store's figures in the Prometheus text format, read from the database.

Every scrape reads one ``Snapshot`` (no statement scans the event log), so the figures hold
for the whole store whichever process serves them. Names:

- ``eventsource_events_appended_total{partition}``: the partition's head (events appended);
- ``eventsource_projection_lag_events{projection,partition}`` and
  ``eventsource_projection_lag_seconds{projection,partition}`` (the age of the first event not
  yet applied; 0 when caught up);
- ``eventsource_projection_partitions_stopped{projection}``: partitions stopped on an error;
- ``eventsource_commands{queue,status}``: commands by queue and state (pending, running, dead);
- ``eventsource_command_oldest_due_age_seconds{queue}``: how long the oldest due pending
  command has waited;
- ``eventsource_dead_letters{queue}``: dead commands;
- ``eventsource_live_workers{kind}``: projection workers with a recent heartbeat
  (``kind="projection"``) and command workers running a command (``kind="command"``);
- ``eventsource_append_rate_events_per_second``: the page's estimate of the append rate;
- ``eventsource_ops_scrape_seconds``: how long reading the figures took.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from eventsource.ops._snapshot import Snapshot, read_snapshot
from eventsource.store import EventStore

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _SnapshotCollector(Collector):
    """Yields the metric families of one snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The metric families, as the module's docstring lists them."""
        s = self.snapshot
        appended = CounterMetricFamily(
            "eventsource_events_appended",
            "Events appended to each partition (its head).",
            labels=["partition"],
        )
        for p in s.partitions:
            appended.add_metric([str(p.partition)], p.head)
        yield appended

        lag = GaugeMetricFamily(
            "eventsource_projection_lag_events",
            "Events of a partition a projection has not applied yet.",
            labels=["projection", "partition"],
        )
        lag_s = GaugeMetricFamily(
            "eventsource_projection_lag_seconds",
            "Age of the first event of a partition a projection has not applied (0: caught up).",
            labels=["projection", "partition"],
        )
        stopped: dict[str, int] = {}
        for c in s.checkpoints:
            labels = [c.projection, str(c.partition)]
            lag.add_metric(labels, c.lag)
            lag_s.add_metric(labels, s.lag_seconds.get((c.projection, c.partition), 0.0))
            stopped[c.projection] = stopped.get(c.projection, 0) + (c.error is not None)
        yield lag
        yield lag_s
        halted = GaugeMetricFamily(
            "eventsource_projection_partitions_stopped",
            "Partitions of a projection stopped on an error.",
            labels=["projection"],
        )
        for name, count in sorted(stopped.items()):
            halted.add_metric([name], count)
        yield halted

        commands = GaugeMetricFamily(
            "eventsource_commands", "Commands by queue and state.", labels=["queue", "status"]
        )
        dead = GaugeMetricFamily(
            "eventsource_dead_letters", "Dead commands (no attempts left).", labels=["queue"]
        )
        for queue in s.queues():
            for status in ("pending", "running", "dead"):
                commands.add_metric([queue, status], s.count(status, queue))
            dead.add_metric([queue], s.count("dead", queue))
        yield commands
        yield dead
        oldest = GaugeMetricFamily(
            "eventsource_command_oldest_due_age_seconds",
            "How long the oldest due pending command of a queue has waited.",
            labels=["queue"],
        )
        for queue in s.queues():
            oldest.add_metric([queue], s.oldest_due.get(queue, 0.0))
        yield oldest

        workers = GaugeMetricFamily(
            "eventsource_live_workers",
            "Projection workers with a recent heartbeat; command workers running a command.",
            labels=["kind"],
        )
        workers.add_metric(["projection"], sum(s.projection_workers.values()))
        workers.add_metric(["command"], s.command_workers)
        yield workers
        yield GaugeMetricFamily(
            "eventsource_append_rate_events_per_second",
            "Events appended per second, estimated over each partition's recent events.",
            value=s.append_rate,
        )
        yield GaugeMetricFamily(
            "eventsource_ops_scrape_seconds",
            "Seconds the figures of this scrape took to read from the database.",
            value=s.read_seconds,
        )


def render_metrics(store: EventStore) -> bytes:
    """The Prometheus text of the store's figures, read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(read_snapshot(store)))
    return generate_latest(registry)
