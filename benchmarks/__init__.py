"""The standard benchmark workloads of eventsource (see BENCHMARKS.md).

    python -m benchmarks [WORKLOAD ...] [--n N] [--repeat R] [--json]
    python -m benchmarks pgbench            # the physical reference, with pgbench

Each workload is one function registered by name in ``WORKLOADS``; each run of it gets a fresh
schema that is dropped afterwards. The reported figure is the median of ``--repeat`` runs.
"""

from __future__ import annotations

from ._harness import Bench, Result, Run, run_workload
from ._registry import WORKLOADS, Workload, workload

__all__ = ["WORKLOADS", "Bench", "Result", "Run", "Workload", "run_workload", "workload"]
