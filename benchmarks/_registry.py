"""The workload registry: one function per workload, registered by name.

A workload takes a ``Bench`` (a store on a fresh, upgraded schema, plus helpers for untimed
set-up) and the size ``n``; it does its own set-up, times only what BENCHMARKS.md says is timed
(with ``bench.timed()``) and returns a ``Run``. Adding one::

    @workload("enqueue", default_n=5000, unit="commands", description="...")
    def enqueue(bench: Bench, n: int) -> Run:
        ...                                  # untimed set-up
        with bench.timed() as timer:
            ...                              # the timed part
        return Run(timer.seconds, n)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._harness import Bench, Run

__all__ = ["WORKLOADS", "Workload", "WorkloadFn", "workload"]

WorkloadFn = Callable[["Bench", int], "Run"]


@dataclass(frozen=True)
class Workload:
    name: str
    fn: WorkloadFn
    default_n: int
    unit: str  # what per_s counts: aggregates, events, commands...
    description: str
    pool_size: int = 2  # connections the store's pool keeps
    min_n: int = 1  # a smaller --n is raised to this (replay needs a log of >= 100,000)


WORKLOADS: dict[str, Workload] = {}


def workload(
    name: str,
    *,
    default_n: int,
    unit: str,
    description: str,
    pool_size: int = 2,
    min_n: int = 1,
) -> Callable[[WorkloadFn], WorkloadFn]:
    """Register ``fn`` as the workload ``name``."""

    def register(fn: WorkloadFn) -> WorkloadFn:
        if name in WORKLOADS:
            raise ValueError(f"workload {name!r} is registered twice")
        WORKLOADS[name] = Workload(name, fn, default_n, unit, description, pool_size, min_n)
        return fn

    return register
