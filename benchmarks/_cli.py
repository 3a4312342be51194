"""``python -m benchmarks [WORKLOAD ...] [--n N] [--repeat R] [--json] [--peers]``.

Workload names are those of ``WORKLOADS`` plus ``pgbench`` (the physical reference); none given
means every registered workload. Results go to stdout (a table, or one JSON line per workload
with ``--json``); progress and messages go to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from eventsource import EventSourceError, EventStore
from eventsource._internal import configure_logging

from . import (  # noqa: F401 - register the workloads
    _commands,
    _ops,
    _projections,
    _relay,
    _workloads,
)
from ._harness import Result, run_workload
from ._peers import PEER_PYTHON, Comparison, PeerResult, compare, default_peers_dir, run_peers
from ._pgbench import CASES, run_pgbench
from ._registry import WORKLOADS

__all__ = ["app", "main"]

PGBENCH = "pgbench"
APPEND = next(case.name for case in CASES if case.append)  # the store's own append, no client
_SUMMARY_KEYS = ("repeat", "per_s_min", "per_s_max", "runs_per_s", "load1")

app = typer.Typer(
    name="benchmarks",
    help="Run eventsource's standard workloads (BENCHMARKS.md) against a real PostgreSQL.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console(width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True)


def _fail(message: str, code: int) -> None:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _resolve_url(database_url: str | None) -> URL:
    """The server, resolved as ``EventStore.from_url`` does (None: env URL, else embedded)."""
    probe = EventStore.from_url(database_url, pool_size=1)
    try:
        return probe.url
    finally:
        probe.close()


def _emit(result: Result, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result.as_json()) + "\n")
        sys.stdout.flush()
    else:
        stderr.print(
            f"{result.workload}: {result.per_s:,.1f} {result.unit}/s"
            f" (median of {result.extra['repeat']})",
            highlight=False,
        )


def _table(results: list[Result]) -> Table:
    table = Table(title="eventsource benchmarks (median of runs)")
    for column in ("workload", "n", "median s", "median /s", "min /s", "max /s"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    table.add_column("unit")
    table.add_column("load1", justify="right")
    table.add_column("details")
    by_name = {r.workload: r for r in results}
    for r in results:
        details = {k: v for k, v in r.extra.items() if k not in _SUMMARY_KEYS}
        for name, label in (("pgbench_insert1_c1", "vs_pgbench_c1"), (APPEND, "vs_append_c1")):
            reference = by_name.get(name)
            if r.workload == "create" and reference is not None:
                details[label] = f"{100 * r.per_s / reference.per_s:.0f}%"
        table.add_row(
            r.workload,
            f"{r.n:,}",
            f"{r.seconds:.3f}",
            f"{r.per_s:,.1f}",
            f"{r.extra['per_s_min']:,.1f}",
            f"{r.extra['per_s_max']:,.1f}",
            r.unit,
            f"{r.extra['load1']:.2f}",
            " ".join(f"{k}={v}" for k, v in details.items()),
        )
    return table


def _peers_table(comparisons: list[Comparison], peers: list[PeerResult]) -> Table:
    table = Table(title="against the peers (same run; ratio > 1: this project ahead)")
    for column in ("workload", "measure", "this project", "best peer", "peer", "ratio", "all"):
        table.add_column(column, justify="left" if column in ("workload", "all") else "right")
    for c in comparisons:
        table.add_row(
            c.workload,
            c.measure,
            f"{c.ours:,.2f}" if c.measure == "p50_ms" else f"{c.ours:,.1f}",
            c.best_peer,
            f"{c.peer:,.2f}" if c.measure == "p50_ms" else f"{c.peer:,.1f}",
            f"{c.ratio:.2f}",
            " ".join(f"{name}={value:,.1f}" for name, value in c.peers.items()),
        )
    compared = {c.workload for c in comparisons}
    for p in peers:
        if p.workload not in compared:
            table.add_row(p.workload, "per_s", "-", p.peer, f"{p.per_s:,.1f}", "-", "")
    return table


def _list() -> None:
    table = Table(title="workloads")
    for column in ("name", "default n", "unit", "what is timed"):
        table.add_column(column)
    for w in WORKLOADS.values():
        table.add_row(w.name, f"{w.default_n:,}", w.unit, w.description)
    table.add_row(PGBENCH, "-", "rows", "; ".join(case.name for case in CASES))
    stdout.print(table)


@app.command()
def run(
    workloads: Annotated[
        list[str] | None,
        typer.Argument(
            help=f"Workloads to run ({', '.join([*WORKLOADS, PGBENCH])}); default: all but"
            f" {PGBENCH}.",
            show_default=False,
        ),
    ] = None,
    *,
    n: Annotated[
        int | None,
        typer.Option("--n", min=1, help="Size of each workload (default: per workload)."),
    ] = None,
    repeat: Annotated[
        int, typer.Option("--repeat", min=1, help="Runs per workload; the median is reported.")
    ] = 3,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON line per workload on stdout.")
    ] = False,
    with_pgbench: Annotated[
        bool, typer.Option("--pgbench", help="Also run the pgbench reference.")
    ] = False,
    pgbench_seconds: Annotated[
        int, typer.Option("--pgbench-seconds", min=1, help="pgbench -T per run.")
    ] = 10,
    pgbench_path: Annotated[
        str | None, typer.Option("--pgbench-path", help="The pgbench executable.")
    ] = None,
    partitions: Annotated[
        int, typer.Option("--partitions", min=1, max=4096, help="Partitions of each schema.")
    ] = 16,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="EVENTSOURCE_DATABASE_URL",
            show_envvar=True,
            help="PostgreSQL URL; unset: the embedded server.",
            show_default=False,
        ),
    ] = None,
    list_workloads: Annotated[
        bool, typer.Option("--list", help="List the workloads and exit.")
    ] = False,
    with_peers: Annotated[
        bool,
        typer.Option("--peers", help="Also run the peers covering these workloads; ratios."),
    ] = False,
    peers_dir: Annotated[
        Path | None,
        typer.Option(
            "--peers-dir",
            help="The peer scripts (default: EVENTSOURCE_PEERS_DIR, else ../shared/peers).",
            show_default=False,
        ),
    ] = None,
    peers_python: Annotated[
        str, typer.Option("--peers-python", help="The peers' venv interpreter.")
    ] = PEER_PYTHON,
) -> None:
    """Run workloads, each in a fresh schema per run, and report the median of the runs."""
    if list_workloads:
        _list()
        return
    names = list(workloads or WORKLOADS)
    if with_pgbench and PGBENCH not in names:
        names.append(PGBENCH)
    unknown = [name for name in names if name != PGBENCH and name not in WORKLOADS]
    if unknown:
        _fail(
            f"unknown workload {', '.join(unknown)}: choose from"
            f" {', '.join([*WORKLOADS, PGBENCH])}",
            2,
        )
    configure_logging("json", "warning")  # logs to stderr; stdout stays clean
    results: list[Result] = []
    try:
        url = _resolve_url(database_url)
        for name in dict.fromkeys(names):
            if name == PGBENCH:
                for case in CASES:
                    with stderr.status(
                        f"pgbench {case.name} ({repeat} runs of {pgbench_seconds}s)"
                    ):
                        result = run_pgbench(
                            url,
                            case,
                            seconds=pgbench_seconds,
                            repeat=repeat,
                            pgbench=pgbench_path,
                            partitions=partitions,
                        )
                    results.append(result)
                    _emit(result, as_json)
                continue
            chosen = WORKLOADS[name]
            size = max(n or chosen.default_n, chosen.min_n)
            stderr.print(f"running {name} (n={size:,}, {repeat} runs)…", highlight=False)
            result = run_workload(url, chosen, n=size, repeat=repeat, partitions=partitions)
            results.append(result)
            _emit(result, as_json)
    except (EventSourceError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc), 1)
    except SQLAlchemyError as exc:  # outside the store's error translation (set-up, pgbench)
        cause = getattr(exc, "orig", None) or exc
        _fail(f"database error: {str(cause).splitlines()[0]}", 1)
    except ValueError as exc:
        _fail(str(exc), 2)
    if not as_json:
        stdout.print(_table(results))
    if with_peers:
        _run_peers(url, results, peers_dir or default_peers_dir(), peers_python, as_json)


def _run_peers(
    url: URL, results: list[Result], peers_dir: Path, python: str, as_json: bool
) -> None:
    """Run the peers of the chosen workloads and print them with the ratios."""
    sizes = {r.workload: r.n for r in results if not r.workload.startswith(PGBENCH)}
    peers = run_peers(url, sizes, peers_dir, python, lambda m: stderr.print(m, highlight=False))
    comparisons = compare(results, peers)
    if as_json:
        for peer in peers:
            sys.stdout.write(json.dumps(peer.line) + "\n")
        for comparison in comparisons:
            sys.stdout.write(json.dumps(comparison.as_json()) + "\n")
        sys.stdout.flush()
    elif peers:
        stdout.print(_peers_table(comparisons, peers))


def main(argv: list[str] | None = None) -> Any:
    """The entry point of ``python -m benchmarks``."""
    return app(args=argv, prog_name="python -m benchmarks")
