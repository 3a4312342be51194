"""Helpers for the projection acceptance tests: worker processes, writer threads, waiting for
a projection to reach the heads of the log."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import projections
from eventsource import EventStore
from tests.projection_domain import write_workload

from ._support import REPO_ROOT, describe, eventsource_command

LEDGER = "tests.projection_domain:Ledger"


class WorkerProcess:
    """One `eventsource projections run` process, its output going to a log file."""

    def __init__(
        self, worker_id: str, args: Sequence[str], env: Mapping[str, str], log_dir: Path
    ) -> None:
        self.worker_id = worker_id
        self.log_path = log_dir / f"{worker_id}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*eventsource_command(), "projections", "run", *args, "--worker-id", worker_id],
            env=dict(env),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self, last: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-last:]

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> int:
        """SIGKILL: no chance to release anything."""
        self.process.kill()
        return self.process.wait(timeout=10)

    def terminate(self, timeout: float) -> int:
        """SIGTERM, and the exit code within ``timeout`` seconds (it fails the test if not)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.worker_id} did not exit within {timeout}s of SIGTERM\n"
                + self.output()
            ) from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


@contextmanager
def worker_processes(
    env: Mapping[str, str], schema: str, log_dir: Path
) -> Iterator[Callable[[str], WorkerProcess]]:
    """Starts Ledger worker processes by id; kills whatever is left of them on the way out."""
    started: list[WorkerProcess] = []

    def start(worker_id: str) -> WorkerProcess:
        worker = WorkerProcess(worker_id, [LEDGER, "--schema", schema], env, log_dir)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.close()


class Writers:
    """Threads appending random workloads (single events, batches, multi-stream transactions)
    in rounds until stopped; each thread has its own streams."""

    def __init__(self, store: EventStore, threads: int, *, ops_per_round: int = 20) -> None:
        self.store = store
        self.ops = ops_per_round
        self.written = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"writer-{i}")
            for i in range(threads)
        ]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, index: int) -> None:
        seed = index * 1_000_000
        try:
            while not self._stop.is_set():
                seed += 1
                count = write_workload(self.store, seed=seed, ops=self.ops, prefix=f"wr{index}")
                with self._lock:
                    self.written += count
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def wait_written(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.written < count:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"writers wrote {self.written} < {count}"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not self.errors, self.errors


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; the seconds it took (fails the test after ``timeout``)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def at_heads(store: EventStore, name: str, owners: set[str] | None = None) -> bool:
    """Every partition of the projection at its head, none stopped (and owned by ``owners``)."""
    rows = [s for s in projections.status(store) if s.projection == name]
    return (
        len(rows) == store.partitions
        and all(s.position == s.head and s.error is None for s in rows)
        and (owners is None or {s.owner for s in rows} <= owners)
    )


def run_no_tty(
    args: Sequence[str], env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `eventsource ARGS` with stdin that is not a terminal (/dev/null)."""
    return subprocess.run(
        [*eventsource_command(), *args],
        env=dict(env),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The process's stderr, checked to be a single `error:` line with no traceback."""
    assert "Traceback" not in result.stderr, describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith("error: "), describe(result)
    return lines[0]
