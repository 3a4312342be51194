"""The benchmark harness's peers: scripts found or reported missing, their JSON lines read,
and our figures set against the best peer's of the same run."""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from benchmarks._harness import Result
from benchmarks._peers import PeerResult, compare, run_peers

URL = make_url("postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _result(workload: str, per_s: float, **extra: float) -> Result:
    return Result(workload, 1000, 1.0, per_s, "events", dict(extra))


def _peer(peer: str, workload: str, per_s: float, p50: float | None = None) -> PeerResult:
    return PeerResult(peer, workload, per_s, p50, {"peer": peer, "workload": workload})


def test_throughput_is_compared_with_the_fastest_peer() -> None:
    """For a rate, the ratio is ours over the best peer's (above 1: ahead)."""
    (c,) = compare(
        [_result("create", 1800.0)], [_peer("mdb", "create", 2400.0), _peer("es", "create", 600.0)]
    )
    assert (c.best_peer, c.peer, c.measure) == ("mdb", 2400.0, "per_s")
    assert c.ratio == 0.75
    assert c.peers == {"mdb": 2400.0, "es": 600.0}


def test_latency_is_compared_by_p50_with_the_quickest_peer() -> None:
    """For a latency, the ratio is the best peer's p50 over ours (above 1: ahead); for the
    queue, ours from enqueue() returning, the span the peers time."""
    ours = _result("queue_latency", 100.0, p50_ms=3.5, committed_p50_ms=2.5)
    (c,) = compare(
        [ours],
        [_peer("oban", "queue_latency", 100.0, p50=2.0), _peer("x", "queue_latency", 1.0, p50=9.0)],
    )
    assert (c.best_peer, c.measure, c.ours, c.peer) == ("oban", "committed_p50_ms", 2.5, 2.0)
    assert c.ratio == 0.8


def test_workloads_no_peer_measured_are_not_compared() -> None:
    """A workload without a peer figure gets no comparison."""
    assert compare([_result("catchup", 5000.0)], [_peer("mdb", "create", 10.0)]) == []


def test_a_missing_peers_dir_or_venv_is_said_and_skipped(tmp_path: Path) -> None:
    """No scripts, or no venv: one line saying so, no results, no error."""
    said: list[str] = []
    assert run_peers(URL, {"create": 10}, tmp_path / "none", sys.executable, said.append) == []
    (tmp_path / "setup.sh").write_text("")
    assert run_peers(URL, {"create": 10}, tmp_path, str(tmp_path / "no-python"), said.append) == []
    assert "no peer scripts in" in said[0]
    assert "run `bash" in said[1] and "going on without them" in said[1]


def test_a_peer_scripts_lines_are_read_and_failures_reported(tmp_path: Path) -> None:
    """A peer script's JSON lines for the chosen workloads come back; its exit code is said."""
    (tmp_path / "setup.sh").write_text("")
    (tmp_path / "pgqueuer_peer.py").write_text(
        "import json, sys\n"
        "print('warming up')\n"
        "print(json.dumps({'peer': 'q', 'workload': 'enqueue', 'n': int(sys.argv[1]),"
        " 'seconds': 1.0, 'per_s': 1500.0}))\n"
        "print(json.dumps({'peer': 'q', 'workload': 'drain', 'n': 1, 'seconds': 1, 'per_s': 9}))\n"
        "sys.exit(3)\n"
    )
    said: list[str] = []
    found = run_peers(URL, {"enqueue": 77}, tmp_path, sys.executable, said.append)
    assert [(r.peer, r.workload, r.per_s, r.line["n"]) for r in found] == [
        ("q", "enqueue", 1500.0, 77)
    ]
    assert any("oban_peer.py is missing" in line for line in said)
    assert any("pgqueuer_peer.py exited 3" in line for line in said)
