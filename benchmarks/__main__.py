"""``python -m benchmarks``: run the standard workloads."""

from __future__ import annotations

from ._cli import main

main()
