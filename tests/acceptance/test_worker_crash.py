"""A worker whose thread dies stops with a log line and a non-zero exit: no zombie workers."""

from __future__ import annotations

import subprocess

from eventsource import CommandQueue, EventStore
from tests.acceptance._crash_support import Crash
from tests.acceptance._support import REPO_ROOT, cli_env, eventsource_command


def test_a_dead_slot_thread_ends_the_worker_process_non_zero(
    store: EventStore, database_url: str
) -> None:
    """A slot thread killed by its handler takes the process down (exit 1), at once, and the
    attempt it was running is recorded as failed."""
    env = cli_env(database_url, EVENTSOURCE_SCHEMA=store.schema, EVENTSOURCE_LOG_FORMAT="json")
    env["PYTHONPATH"] = str(REPO_ROOT)
    process = subprocess.Popen(
        [
            *eventsource_command(),
            "worker",
            "run",
            "tests.acceptance._crash_support",
            "--queue",
            "crash",
            "--concurrency",
            "2",
            "--grace",
            "2",
        ],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    queue = CommandQueue(store)
    try:
        queued = queue.enqueue(Crash(n=1))
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, output
    assert "worker thread died" in output
    assert "ThreadKiller" in output
    # The attempt that was running is recorded as failed, to be retried by another worker.
    assert queued.id is not None
    info = queue.get(queued.id)
    assert info is not None
    assert (info.status, info.attempts) == ("pending", 1)
    assert info.last_error is not None
    assert info.last_error.startswith("WorkerCrashed: ThreadKiller")
