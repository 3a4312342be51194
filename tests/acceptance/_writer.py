"""A writer process for the ordering test: appends in every shape the store offers, reports it.

    python -m tests.acceptance._writer URL SCHEMA WRITER OPS SEED STREAMS OUT

Appends to ``STREAMS`` streams shared with the other writers (``s0``, ``s1``, …) and to streams of
its own: single events, batches, exact-version appends that may lose a race, transactions over one
stream or several streams in several partitions (in random order), transactions rolled back after
their append was written, and idempotent retries (the same events, the same expected version).
Writes JSON to ``OUT``: every committed append with its result, the ids of every event that must
never be stored, and the retries' results.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from typing import Any

from eventsource import (
    ANY,
    NO_STREAM,
    AppendResult,
    ConcurrencyError,
    Event,
    EventStore,
    ExpectedVersion,
    partition_for,
)
from tests.domain import Deposited, Opened


class _Abort(Exception):
    """Raised inside a transaction to roll it back on purpose."""


def _deposits(rng: random.Random, count: int) -> list[Event]:
    return [Deposited(amount=rng.randint(1, 1000)) for _ in range(count)]


def _committed(events: Sequence[Event], result: AppendResult, expected: object) -> dict[str, Any]:
    return {
        "stream_id": result.stream_id,
        "event_ids": [str(e.event_id) for e in events],
        "stream_version": result.stream_version,
        "partition": result.partition,
        "position": result.position,
        "duplicate": result.duplicate,
        "expected": repr(expected),
    }


class Writer:
    """One writer's run: a random mix of appends, recorded as they commit."""

    def __init__(self, store: EventStore, writer: int, seed: int, streams: int) -> None:
        self.store = store
        self.writer = writer
        self.rng = random.Random(seed)
        self.partitions = store.partitions
        self.shared = [f"s{k}" for k in range(streams)]
        self.by_partition: dict[int, list[str]] = {}
        for stream_id in self.shared:
            self.by_partition.setdefault(partition_for(stream_id, self.partitions), []).append(
                stream_id
            )
        self.committed: list[dict[str, Any]] = []
        self.discarded: list[str] = []
        self.retries: list[dict[str, Any]] = []
        self.retryable: list[tuple[str, list[Event], AppendResult, int | ExpectedVersion]] = []
        self.conflicts = 0

    def run(self, ops: int) -> None:
        kinds = ["single", "batch", "new", "exact", "tx", "rollback", "retry"]
        weights = [30, 20, 8, 12, 20, 5, 5]
        for op in range(ops):
            kind = self.rng.choices(kinds, weights)[0]
            getattr(self, f"op_{kind}")(op)

    def _append(
        self, stream_id: str, events: list[Event], expected: int | ExpectedVersion = ANY
    ) -> None:
        result = self.store.append(stream_id, events, expected_version=expected)
        assert isinstance(result, AppendResult)
        self.committed.append(_committed(events, result, expected))
        self.retryable.append((stream_id, events, result, expected))

    def op_single(self, op: int) -> None:
        self._append(self.rng.choice(self.shared), _deposits(self.rng, 1))

    def op_batch(self, op: int) -> None:
        self._append(self.rng.choice(self.shared), _deposits(self.rng, self.rng.randint(2, 6)))

    def op_new(self, op: int) -> None:
        events: list[Event] = [Opened(owner=f"w{self.writer}")]
        events += _deposits(self.rng, self.rng.randint(0, 3))
        self._append(f"w{self.writer}-{op}", events, NO_STREAM)

    def op_exact(self, op: int) -> None:
        stream_id = self.rng.choice(self.shared)
        version = self.store.stream_version(stream_id)
        events = _deposits(self.rng, self.rng.randint(1, 3))
        try:
            self._append(stream_id, events, version)
        except ConcurrencyError:
            self.conflicts += 1
            self.discarded += [str(e.event_id) for e in events]

    def _tx_streams(self) -> list[str]:
        """2-4 shared streams, mostly in different partitions, in random order."""
        parts = list(self.by_partition)
        self.rng.shuffle(parts)
        chosen = {self.rng.choice(self.by_partition[p]) for p in parts[: self.rng.randint(2, 3)]}
        chosen.add(self.rng.choice(self.shared))  # sometimes a second one in a partition
        streams = sorted(chosen)
        self.rng.shuffle(streams)
        return streams

    def op_tx(self, op: int) -> None:
        # Mostly several streams (the append function); sometimes one (the one-statement path).
        streams = self._tx_streams() if self.rng.random() < 0.75 else [self.rng.choice(self.shared)]
        staged: list[tuple[str, list[Event], Any, int | ExpectedVersion]] = []
        try:
            with self.store.transaction() as tx:
                for stream_id in streams:
                    events = _deposits(self.rng, self.rng.randint(1, 4))
                    expected: int | ExpectedVersion = ANY
                    if self.rng.random() < 0.2:
                        expected = self.store.stream_version(stream_id)
                    pending = self.store.append(stream_id, events, expected, tx=tx)
                    staged.append((stream_id, events, pending, expected))
        except ConcurrencyError:
            self.conflicts += 1
            self.discarded += [str(e.event_id) for _, events, _, _ in staged for e in events]
            return
        for stream_id, events, pending, expected in staged:
            self.committed.append(_committed(events, pending.result, expected))
            self.retryable.append((stream_id, events, pending.result, expected))

    def op_rollback(self, op: int) -> None:
        streams = self._tx_streams()
        events_by_stream = {s: _deposits(self.rng, self.rng.randint(1, 3)) for s in streams}
        try:
            with self.store.transaction() as tx:
                for stream_id, events in events_by_stream.items():
                    self.store.append(stream_id, events, tx=tx)
                tx.flush()  # the heads are taken and positions assigned ...
                raise _Abort  # ... and then given back
        except _Abort:
            pass
        self.discarded += [str(e.event_id) for events in events_by_stream.values() for e in events]

    def op_retry(self, op: int) -> None:
        if not self.retryable:
            self.op_single(op)
            return
        # The same events with the same expectation, as a client retries after a lost reply.
        stream_id, events, original, expected = self.rng.choice(self.retryable)
        result = self.store.append(stream_id, events, expected_version=expected)
        assert isinstance(result, AppendResult)
        self.retries.append(
            {
                "original": _committed(events, original, expected),
                "retry": _committed(events, result, expected),
            }
        )


def main(argv: list[str]) -> None:
    url, schema, writer, ops, seed, streams, out = argv
    with EventStore.from_url(url, schema=schema, pool_size=2) as store:
        run = Writer(store, int(writer), int(seed), int(streams))
        run.run(int(ops))
    with open(out, "w", encoding="utf-8") as f:
        json.dump(
            {
                "committed": run.committed,
                "discarded": run.discarded,
                "retries": run.retries,
                "conflicts": run.conflicts,
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
