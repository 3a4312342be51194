"""The relay: the partitioned log, published in order to a streaming engine (NATS JetStream).

``RelayWorker`` runs on the shared worker runtime: it takes partitions by lease, publishes
each one's events in position order to subject ``<prefix>.<partition>`` of a JetStream stream
(``NatsSink``), and moves its checkpoint in PostgreSQL once the engine has acknowledged them.
``Sink`` is the interface that another engine (Kafka) would implement. ``record_from_message``
rebuilds a ``RecordedEvent`` from a relayed message's headers and payload.

nats-py is an optional dependency: ``pip install 'eventsource-pg[nats]'``.
"""

from __future__ import annotations

from eventsource.relay._client import NatsClient, check_nats_url, nats_module, safe_nats_url
from eventsource.relay._errors import MalformedMessage, SinkMisconfigured, SinkUnavailable
from eventsource.relay._messages import (
    MSG_ID,
    RelayMessage,
    check_stream_name,
    check_subject_prefix,
    record_from_message,
    relay_message,
    subject_for,
)
from eventsource.relay._nats import NatsSink, last_message
from eventsource.relay._sink import Acked, Sink
from eventsource.relay._worker import RelayWorker, status_rows

__all__ = [
    "MSG_ID",
    "Acked",
    "MalformedMessage",
    "NatsClient",
    "NatsSink",
    "RelayMessage",
    "RelayWorker",
    "Sink",
    "SinkMisconfigured",
    "SinkUnavailable",
    "check_nats_url",
    "check_stream_name",
    "check_subject_prefix",
    "last_message",
    "nats_module",
    "record_from_message",
    "relay_message",
    "safe_nats_url",
    "status_rows",
    "subject_for",
]
