"""The worker runtime: what every long-running worker kind shares.

Projection workers, command workers and reactors are one kind of process; each supplies only
its loop body and takes the rest from here:

- ``Backoff``: exponential delays with jitter, for reconnecting after an outage;
- ``Listener``: a LISTEN connection that is re-established after every loss, and says so,
  so that the worker reads once to catch up on what was announced in the gap;
- ``Supervisor``: threads whose unexpected death stops the worker and makes ``run`` raise
  ``WorkerCrashed`` (the CLI then exits non-zero), so that no worker lives on as a zombie;
- ``run_on_thread_loop``: async handlers run from worker threads, one event loop per thread;
- ``worker_thread_running``: a worker on a thread of its own while an ``async with`` block of
  an application's event loop runs;
- ``GroupMembership``: a worker's membership of the groups that split partitions round-robin
  (relays, projections), one statement per heartbeat;
- ``is_outage``: the one rule for what counts as an outage.

An outage is waited out, never fatal: only connection-class failures count as one, and
everything else is the error of the work in hand.
"""

from __future__ import annotations

from eventsource._errors import WorkerCrashed, first_line, is_outage
from eventsource.runtime._backoff import Backoff, default_worker_id
from eventsource.runtime._listener import Listener
from eventsource.runtime._loop import close_thread_loop, run_on_thread_loop
from eventsource.runtime._membership import GroupMembership, MembershipQueries
from eventsource.runtime._supervisor import Supervisor
from eventsource.runtime._thread import WorkerThread, worker_thread_running

__all__ = [
    "Backoff",
    "GroupMembership",
    "Listener",
    "MembershipQueries",
    "Supervisor",
    "WorkerCrashed",
    "WorkerThread",
    "close_thread_loop",
    "default_worker_id",
    "first_line",
    "is_outage",
    "run_on_thread_loop",
    "worker_thread_running",
]
