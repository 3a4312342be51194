"""A load process for the fault suite: appends events or enqueues commands until SIGTERM.

    python -m tests.fault._load events|commands URL SCHEMA INDEX OUT

Writes one JSON line to ``OUT`` per operation, flushed at once (so that it survives whatever
happens to the process), and errors to stderr. SIGUSR1 pauses it after the operation in hand
(retries included), SIGUSR2 resumes it: the test measures wake-ups of idle workers.

``events``: appends to streams of its own (``w<INDEX>-s<k>``, and new ones ``w<INDEX>-n<op>``
created with ``NO_STREAM``): single events, batches, and transactions over 2-3 streams (some
of them kept open a moment by a statement of their own, so that a fault finds them open). A
failed append is retried with the same events and the same expectation, as a client does after
a lost reply, until it is acknowledged: ``{"op", "acked": true, "tries", "appends": [...]}``
with every append's result. An operation cut short by SIGTERM is written as ``"acked":
false`` with its event ids (it may or may not be stored), as is one whose retry was refused:
``"refused"`` holds the error.

``commands``: enqueues ``Job`` commands numbered ``INDEX * 10**7 + k``, one at a time or five
in one statement. A failed enqueue is not retried (it may have committed: a retry could make a
second command of the number): ``{"ns", "acked": true, "ids"}`` or ``{"ns", "acked": false}``.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from typing import IO, Any

from sqlalchemy import text

from eventsource import (
    ANY,
    NO_STREAM,
    AppendResult,
    CommandQueue,
    ConcurrencyError,
    Event,
    EventStore,
    ExpectedVersion,
)
from tests.domain import Deposited, Opened

from ._model import Job

EVENTS_PAUSE = 0.005  # seconds between two operations of an event writer
COMMANDS_PAUSE = 0.05  # ... of the command enqueuer
STREAMS = 20

# Set only by signal handlers. Plain flags, not threading.Event: an Event set from a
# handler that interrupts this thread inside that Event's own wait deadlocks on its lock.
_flags = {"stop": False, "paused": False}


def _stopping() -> bool:
    return _flags["stop"]


def _sleep(seconds: float) -> bool:
    """Sleep up to ``seconds`` (less once stopping); whether the load is stopping."""
    deadline = time.monotonic() + seconds
    while not _flags["stop"] and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.01))
    return _flags["stop"]


def _pause_point() -> None:
    """Wait here while paused (between two operations)."""
    while _flags["paused"] and not _flags["stop"]:
        time.sleep(0.01)


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _result(result: AppendResult) -> dict[str, Any]:
    return {
        "stream_id": result.stream_id,
        "stream_version": result.stream_version,
        "partition": result.partition,
        "position": result.position,
        "duplicate": result.duplicate,
    }


Plan = list[tuple[str, list[Event], int | ExpectedVersion]]


def _plan(rng: random.Random, index: int, op: int) -> Plan:
    """The appends of one operation: (stream, events, expected version)."""
    kind = rng.random()
    own = [f"w{index}-s{k}" for k in range(STREAMS)]

    def deposits(low: int, high: int) -> list[Event]:
        return [Deposited(amount=rng.randint(1, 1000)) for _ in range(rng.randint(low, high))]

    if kind < 0.1:
        return [(f"w{index}-n{op}", [Opened(owner=f"w{index}"), *deposits(0, 2)], NO_STREAM)]
    if kind < 0.7:
        return [(rng.choice(own), deposits(1, 4), ANY)]
    return [(stream_id, deposits(1, 3), ANY) for stream_id in rng.sample(own, rng.randint(2, 3))]


def _append_once(store: EventStore, plan: Plan, *, slow: bool) -> list[AppendResult]:
    if len(plan) == 1 and not slow:
        stream_id, events, expected = plan[0]
        result = store.append(stream_id, events, expected_version=expected)
        assert isinstance(result, AppendResult)
        return [result]
    with store.transaction() as tx:
        if slow:
            tx.execute(text("SELECT pg_sleep(0.03)"))
        pending = [store.append(s, events, expected, tx=tx) for s, events, expected in plan]
    return [p.result for p in pending]  # type: ignore[union-attr]


def _ids(plan: Plan) -> list[str]:
    return [str(e.event_id) for _, events, _ in plan for e in events]


def run_events(store: EventStore, index: int, out: IO[str]) -> None:
    rng = random.Random(index)
    op = 0
    while not _stopping():
        op += 1
        plan = _plan(rng, index, op)
        slow = rng.random() < 0.1
        tries = 0
        delay = 0.05
        record: dict[str, Any] = {"op": op, "acked": False, "event_ids": _ids(plan)}
        while True:
            tries += 1
            try:
                results = _append_once(store, plan, slow=slow)
            except ConcurrencyError as exc:
                # Only a retry can meet one (every first try appends to streams of our own
                # that exist, or creates one): the retry of a stored append was refused.
                _say(f"op {op} try {tries}: retry refused: {exc!r}")
                record["refused"] = repr(exc)
                break
            except Exception as exc:  # the outage: try again with the same events
                _say(f"op {op} try {tries}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                if _sleep(delay):
                    break
                delay = min(delay * 2, 0.5)
                continue
            record = {
                "op": op,
                "acked": True,
                "tries": tries,
                "t": time.time(),
                "appends": [
                    {**_result(r), "event_ids": [str(e.event_id) for e in events]}
                    for r, (_, events, _) in zip(results, plan, strict=True)
                ],
            }
            break
        out.write(json.dumps(record) + "\n")
        out.flush()
        _sleep(EVENTS_PAUSE)
        _pause_point()


def run_commands(store: EventStore, index: int, out: IO[str]) -> None:
    rng = random.Random(index)
    queue = CommandQueue(store)
    n = index * 10**7
    while not _stopping():
        count = 5 if rng.random() < 0.2 else 1
        ns = list(range(n + 1, n + 1 + count))
        n += count
        jobs = [Job(n=k, sleep=rng.choice([0.0, 0.005, 0.02])) for k in ns]
        try:
            ids = [queue.enqueue(jobs[0]).id] if count == 1 else list(queue.enqueue_many(jobs))
        except Exception as exc:
            _say(f"enqueue {ns}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            out.write(json.dumps({"ns": ns, "acked": False}) + "\n")
        else:
            out.write(json.dumps({"ns": ns, "acked": True, "ids": ids, "t": time.time()}) + "\n")
        out.flush()
        _sleep(COMMANDS_PAUSE)
        _pause_point()


def main(argv: list[str]) -> None:
    kind, url, schema, index, out_path = argv
    signal.signal(signal.SIGTERM, lambda *_: _flags.update(stop=True))
    signal.signal(signal.SIGUSR1, lambda *_: _flags.update(paused=True))
    signal.signal(signal.SIGUSR2, lambda *_: _flags.update(paused=False))
    with (
        EventStore.from_url(url, schema=schema, pool_size=2) as store,
        open(out_path, "a", encoding="utf-8") as out,
    ):
        _say(f"{kind} load {index} started")
        if kind == "events":
            run_events(store, int(index), out)
        else:
            run_commands(store, int(index), out)
        _say(f"{kind} load {index} stopped")


if __name__ == "__main__":
    main(sys.argv[1:])
