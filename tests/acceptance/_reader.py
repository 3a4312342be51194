"""A reader process for the ordering test: tails every partition and records what it saw, in order.

    python -m tests.acceptance._reader URL SCHEMA LIMIT OUT

Prints ``ready`` once it has polled every partition, then polls ``read_partition(p, after=last)``
in a tight loop until its stdin is closed; then reads each partition to its end once more and
writes JSON to ``OUT``: per partition, the (position, event id) pairs in the order they were
returned, and how many polls returned events while the writers were running.
"""

from __future__ import annotations

import json
import sys
import threading

from eventsource import EventStore


def main(argv: list[str]) -> None:
    url, schema, limit_text, out = argv
    limit = int(limit_text)
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    with EventStore.from_url(url, schema=schema, pool_size=1) as store:
        partitions = store.partitions
        seen: dict[int, list[tuple[int, str]]] = {p: [] for p in range(partitions)}
        last = dict.fromkeys(range(partitions), 0)
        live_batches = 0
        polls = 0

        def poll(partition: int) -> int:
            batch = store.read_partition(partition, after=last[partition], limit=limit)
            for record in batch:
                seen[partition].append((record.position, str(record.event_id)))
            if batch:
                last[partition] = batch[-1].position
            return len(batch)

        for p in range(partitions):
            poll(p)
        print("ready", flush=True)
        while not stop.is_set():
            for p in range(partitions):
                polls += 1
                if poll(p):
                    live_batches += 1
        # The writers have finished: read what is left, up to each partition's end.
        for p in range(partitions):
            while poll(p):
                pass
    with open(out, "w", encoding="utf-8") as f:
        json.dump(
            {
                "seen": {str(p): pairs for p, pairs in seen.items()},
                "live_batches": live_batches,
                "polls": polls,
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
