"""The operations page: the event log, the projections and the command queue on one page.

``eventsource ops serve`` runs it (on 127.0.0.1:8765 by default); ``ops_app`` builds it as an
ASGI application to mount inside a service (install the ``ops`` extra)::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from eventsource import EventStore
    from eventsource.ops import ops_app

    store = EventStore.from_env()
    app = Starlette(routes=[Mount("/ops", ops_app(store))])   # or FastAPI().mount("/ops", ...)

Pages: the overview, the projections (retry, skip, replay), the command queue (retry,
purge), a stream and partition viewer; ``/metrics`` (Prometheus text, computed from the
database), ``/healthz`` (the process is up) and ``/readyz`` (the database answers). Actions
need ``EVENTSOURCE_OPS_TOKEN``; without it the page is read-only.

The figures it shows (``read_snapshot``) and the checks of ``--check`` (``projection_problems``,
``command_problems``) need none of the extra's packages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from eventsource._config import MIN_TOKEN, Settings
from eventsource.ops._health import command_problems, projection_problems
from eventsource.ops._snapshot import CommandCount, Partition, Snapshot, read_snapshot
from eventsource.store import EventStore

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from projections import Projection

__all__ = [
    "CommandCount",
    "Partition",
    "Snapshot",
    "command_problems",
    "ops_app",
    "projection_problems",
    "read_snapshot",
]


def ops_app(
    store: EventStore | None = None,
    *,
    token: str | None = None,
    read_only: bool = False,
    projections: Sequence[Projection] = (),
    refresh: float = 5.0,
) -> Starlette:
    """The operations page as a Starlette (ASGI) application.

    ``store``: the store to show (default: ``EventStore.from_env()``, closed at the app's
    shutdown). ``token``: the token actions need (default: ``EVENTSOURCE_OPS_TOKEN``; none
    and ``read_only``: the page is read-only). ``projections``: the projections that the page
    may replay (their code is needed to rebuild them). ``refresh``: seconds between the page's
    own refreshes (0: never).
    """
    from eventsource.ops._app import OpsState, build_app, templates  # noqa: PLC0415 - the extra
    from eventsource.ops._replays import Replays  # noqa: PLC0415
    from eventsource.ops._security import Guard  # noqa: PLC0415

    if token is not None and len(token) < MIN_TOKEN:
        raise ValueError(f"token: must be at least {MIN_TOKEN} characters long")
    if not (refresh == 0 or 1 <= refresh <= 3600):
        raise ValueError(f"refresh: must be 0 (never) or from 1 to 3600 seconds, got {refresh!r}")
    settings = None
    if token is None and not read_only:
        settings = Settings()
        secret = settings.ops_token
        token = secret.get_secret_value() if secret is not None else None
    owns = store is None
    if store is None:
        store = EventStore.from_env(settings or Settings())
    state = OpsState(
        store=store,
        guard=Guard(None if read_only else token),
        replays=Replays(store, list(projections)),
        templates=templates(),
        refresh=refresh,
        owns_store=owns,
    )
    return build_app(state)
