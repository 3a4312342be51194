"""The peers in the same run: the systems users would pick instead, measured beside ours.

``python -m benchmarks WORKLOAD ... --peers`` runs, after the project's workloads, the peer
scripts that cover them (Message DB, eventsourcing, pgqueuer, Oban for Python, chancy,
procrastinate), each printing one JSON line per workload with the same workload names, and
prints the ratios of the project's figures to the best peer's of this run. The scripts and
their set-up live outside the package (``--peers-dir``, by default ``../shared/peers`` beside
the checkout; ``bash <dir>/setup.sh`` makes their venv). When the scripts or the venv are
missing, a line says so and the run goes on without them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from ._harness import Result

__all__ = ["PEER_PYTHON", "Comparison", "PeerResult", "compare", "default_peers_dir", "run_peers"]

PEER_PYTHON = "/tmp/peers/bin/python"  # made by the peers' setup.sh
PEER_TIMEOUT = 1800.0  # seconds one peer script may take
# Latencies (lower is better), compared by the p50 of ours that spans what the peers time.
# The peers' queue_latency runs from enqueue() *returning* to the handler's start, as our
# committed_p50_ms does (our p50_ms also counts the producer's own commit).
LATENCY = {"queue_latency": "committed_p50_ms", "tail_latency": "p50_ms"}

Sizes = Mapping[str, int]  # the n of each chosen workload of ours


def _only(sizes: Sizes, covers: Iterable[str]) -> list[str]:
    return ["--only", ",".join(w for w in covers if w in sizes)]


@dataclass(frozen=True)
class _Script:
    """One peer script: what it measures and its command-line arguments for a run."""

    file: str
    covers: tuple[str, ...]
    args: Callable[[Sizes], list[str]]


def _n(sizes: Sizes, *workloads: str, default: int = 5000) -> str:
    """The size to give a script covering ``workloads``: the largest chosen one's n."""
    return str(max((sizes[w] for w in workloads if w in sizes), default=default))


_STORE = ("create", "command", "concurrent", "batch", "replay")
_ES = ("create", "command", "concurrent", "replay")
SCRIPTS: tuple[_Script, ...] = (
    _Script(
        "message_db_peer.py",
        _STORE,
        lambda s: [
            _n(s, "create", "command", "concurrent", "batch"),
            "8",
            _n(s, "replay", default=100_000),
            *_only(s, _STORE),
        ],
    ),
    # Runs before the projection peer, whose log it writes (schema peer_es).
    _Script(
        "eventsourcing_peer.py",
        (*_ES, "catchup"),
        lambda s: [_n(s, "create", "command", "concurrent"), "8", _n(s, "replay", default=100_000)],
    ),
    _Script("eventsourcing_projection_peer.py", ("catchup",), lambda s: []),
    _Script("pgqueuer_peer.py", ("enqueue", "drain"), lambda s: [_n(s, "drain", "enqueue"), "200"]),
    _Script(
        "oban_peer.py",
        ("enqueue", "drain", "queue_latency"),
        lambda s: [
            _n(s, "enqueue", "queue_latency"),
            _n(s, "drain", default=20_000),
            *_only(s, ("enqueue", "drain", "queue_latency")),
        ],
    ),
    _Script(
        "chancy_peer.py",
        ("enqueue", "drain"),
        lambda s: [
            _n(s, "enqueue"),
            _n(s, "drain", default=20_000),
            *_only(s, ("enqueue", "drain")),
        ],
    ),
    _Script("procrastinate_peer.py", ("enqueue", "drain"), lambda s: [_n(s, "enqueue"), "4"]),
)


@dataclass(frozen=True)
class PeerResult:
    """One JSON line of a peer script."""

    peer: str
    workload: str
    per_s: float
    p50_ms: float | None
    line: dict[str, Any] = field(compare=False)


def default_peers_dir() -> Path:
    """``EVENTSOURCE_PEERS_DIR``, else ``../shared/peers`` beside the checkout."""
    given = os.environ.get("EVENTSOURCE_PEERS_DIR")
    if given:
        return Path(given)
    return Path(__file__).resolve().parents[2] / "shared" / "peers"


def _peer_env(url: URL) -> dict[str, str]:
    """The scripts' libpq settings for our server (their own databases keep their names)."""
    env = dict(os.environ)
    pairs = {
        "PGHOST": url.host,
        "PGPORT": str(url.port) if url.port else None,
        "PGUSER": url.username,
        "PGPASSWORD": url.password,
        "PGDATABASE": url.database,
    }
    env.update({k: v for k, v in pairs.items() if v})
    if url.host and url.database:
        user = f" user={url.username}" if url.username else ""
        port = f" port={url.port}" if url.port else ""
        env.setdefault("PEER_DSN", f"host={url.host}{port} dbname={url.database}{user}")
    return env


def _parse(stdout: str) -> list[PeerResult]:
    """The result lines of a script's output (other lines are ignored)."""
    found = []
    for raw in stdout.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and {"peer", "workload", "per_s"} <= line.keys():
            p50 = line.get("p50_ms")
            found.append(
                PeerResult(
                    str(line["peer"]),
                    str(line["workload"]),
                    float(line["per_s"]),
                    float(p50) if p50 is not None else None,
                    line,
                )
            )
    return found


def run_peers(
    url: URL,
    sizes: Sizes,
    peers_dir: Path,
    python: str,
    say: Callable[[str], None],
) -> list[PeerResult]:
    """Run the peer scripts that cover the chosen workloads; their results.

    A missing directory, venv or script, or a script that fails, is reported through ``say``
    and skipped: the project's own figures stand without them.
    """
    if not (peers_dir / "setup.sh").is_file():
        say(f"peers: no peer scripts in {peers_dir} (--peers-dir); going on without them")
        return []
    if not Path(python).is_file():
        say(
            f"peers: {python} not found: run `bash {peers_dir / 'setup.sh'}` first;"
            " going on without them"
        )
        return []
    results: list[PeerResult] = []
    env = _peer_env(url)
    for script in SCRIPTS:
        if not any(w in sizes for w in script.covers):
            continue
        path = peers_dir / script.file
        if not path.is_file():
            say(f"peers: {path} is missing; skipped")
            continue
        say(f"peers: running {script.file}…")
        try:
            done = subprocess.run(
                [python, str(path), *script.args(sizes)],
                env=env,
                capture_output=True,
                text=True,
                timeout=PEER_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            say(f"peers: {script.file} ran past {PEER_TIMEOUT:g} s; skipped")
            continue
        parsed = [r for r in _parse(done.stdout) if r.workload in sizes]
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            say(f"peers: {script.file} exited {done.returncode}: {last}")
        results.extend(parsed)
    return results


@dataclass(frozen=True)
class Comparison:
    """Our figure of a workload beside the best peer's of the same run."""

    workload: str
    ours: float
    best_peer: str
    peer: float
    ratio: float  # > 1: ours is ahead (faster, or lower latency)
    measure: str  # "per_s", or the p50 field of ours compared (see LATENCY)
    peers: dict[str, float]

    def as_json(self) -> dict[str, Any]:
        return {
            "comparison": self.workload,
            "measure": self.measure,
            "ours": self.ours,
            "best_peer": self.best_peer,
            "peer": self.peer,
            "ratio": round(self.ratio, 3),
            "peers": self.peers,
        }


def compare(ours: Iterable[Result], peers: Iterable[PeerResult]) -> list[Comparison]:
    """Each of our workloads that a peer measured, against the best peer (same run)."""
    peer_list = list(peers)
    comparisons = []
    for result in ours:
        if result.workload in LATENCY:
            figures = {
                p.peer: p.p50_ms
                for p in peer_list
                if p.workload == result.workload and p.p50_ms is not None
            }
            ours_p50 = result.extra.get(LATENCY[result.workload])
            if not figures or not isinstance(ours_p50, int | float) or ours_p50 <= 0:
                continue
            best = min(figures, key=lambda name: figures[name] or 0.0)
            best_p50 = float(figures[best] or 0.0)
            comparisons.append(
                Comparison(
                    result.workload,
                    float(ours_p50),
                    best,
                    best_p50,
                    best_p50 / float(ours_p50),
                    LATENCY[result.workload],
                    {k: float(v or 0.0) for k, v in figures.items()},
                )
            )
            continue
        rates = {p.peer: p.per_s for p in peer_list if p.workload == result.workload}
        if not rates:
            continue
        best = max(rates, key=lambda name: rates[name])
        if rates[best] <= 0:
            continue
        comparisons.append(
            Comparison(
                result.workload,
                result.per_s,
                best,
                rates[best],
                result.per_s / rates[best],
                "per_s",
                rates,
            )
        )
    return comparisons
