"""Where the relay publishes: the ``Sink`` protocol, which a NATS JetStream sink implements
(and a Kafka sink could, later).

The relay hands a sink one *window* at a time: up to a batch of messages for each of several
partitions, each partition's in position order. The sink publishes them and reports, per
partition, how far the engine acknowledged them *in order* (the last position of the longest
acknowledged prefix) and the error that stopped it, if any. The relay moves its checkpoints
in PostgreSQL to those positions only, so a message is never counted as relayed before the
engine has it.

A sink keeps a partition's messages in order on the engine: what the engine stores of a
partition is always a prefix of what it was sent (one connection, no re-sending of a buffer
after a reconnect), so that after any failure the last message stored for a partition tells
the relay where to resume (``last_position``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from eventsource.relay._messages import RelayMessage

__all__ = ["Acked", "Sent", "Sink"]


@dataclass(frozen=True, slots=True)
class Acked:
    """How far a partition's messages of one window were acknowledged.

    ``position``: the last position of the acknowledged prefix (None: none was);
    ``error``: why the rest was not (None: all were).
    """

    position: int | None
    error: BaseException | None = None


class Sent(Protocol):
    """A window handed to the engine, its acknowledgements still to come."""

    def wait(self) -> dict[int, Acked]:
        """How far each partition was acknowledged; ``SinkUnavailable`` if the engine was
        lost meanwhile (nothing of the window counts then)."""


class Sink(Protocol):
    """A streaming engine that the relay publishes to, partition by partition, in order."""

    @property
    def name(self) -> str:
        """The name of the target (a JetStream stream, a Kafka topic); the relay's name."""

    @property
    def subject_prefix(self) -> str:
        """Messages of partition ``p`` go to subject ``<subject_prefix>.<p>`` (a Kafka sink
        would map that to its topic and the partition to the record's partition)."""

    @property
    def min_dedupe_window(self) -> float:
        """The de-duplication window the sink needs (seconds), or 0 if it has none."""

    def open(self) -> None:
        """Connect, and create or check the target; ``SinkUnavailable`` while unreachable,
        ``SinkMisconfigured`` naming a setting of the target that does not fit."""

    def publish(self, window: Mapping[int, Sequence[RelayMessage]]) -> dict[int, Acked]:
        """Publish each partition's messages in order; how far each was acknowledged.

        ``SinkUnavailable`` if the engine could not be reached at all (nothing acknowledged).
        """

    def send(self, window: Mapping[int, Sequence[RelayMessage]]) -> Sent:
        """Start publishing a window (as ``publish``) and return without waiting for it.

        The relay reads its next window meanwhile; it sends nothing more before ``wait``.
        """

    def last_position(self, partition: int) -> int:
        """The position of the last message the engine holds for ``partition`` (0: none).

        ``SinkUnavailable`` while unreachable; ``MalformedMessage`` if that message is not
        one the relay published.
        """

    def close(self) -> None:
        """Disconnect (idempotent)."""
