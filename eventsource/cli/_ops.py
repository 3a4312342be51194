"""`eventsource ops`: serve the operations page (needs the ``ops`` extra)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from eventsource._config import Settings
from eventsource.cli._app import console, fail, open_store
from eventsource.cli._options import with_settings
from eventsource.cli._projections import _load_projection

ops_app_cli = typer.Typer(
    help="The operations page: projections, the command queue and the log in a browser.",
    no_args_is_help=True,
)


@ops_app_cli.command("serve")
@with_settings()
def ops_serve(
    settings: Settings,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (other hosts: 0.0.0.0, at your risk).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to bind.")] = 8765,
    projection: Annotated[
        list[str] | None,
        typer.Option(
            "--projection",
            help="A projection (MODULE:CLASS) the page may replay; repeat for more.",
            show_default=False,
        ),
    ] = None,
    refresh: Annotated[
        float,
        typer.Option("--refresh", min=0, max=3600, help="Seconds between refreshes (0: never)."),
    ] = 5.0,
) -> None:
    """Serve the operations page, /metrics, /healthz and /readyz until SIGTERM/SIGINT.

    Actions (retry, skip, replay, purge) need EVENTSOURCE_OPS_TOKEN; without it, read-only.
    """
    try:
        import uvicorn  # noqa: PLC0415 - the ops extra

        from eventsource.ops import ops_app  # noqa: PLC0415
    except ImportError as exc:
        fail(
            f"the operations page needs the ops extra: pip install 'eventsource-pg[ops]' ({exc})",
            1,
        )
    if 0 < refresh < 1:
        raise ValueError(f"--refresh: must be 0 (never) or from 1 to 3600, got {refresh:g}")
    loaded = [_load_projection(target) for target in projection or []]
    token = settings.ops_token.get_secret_value() if settings.ops_token else None
    store = open_store(settings)
    try:
        app = ops_app(
            store, token=token, read_only=token is None, projections=loaded, refresh=refresh
        )
        mode = "actions need the token" if token else "read-only (no EVENTSOURCE_OPS_TOKEN)"
        console.print(f"eventsource ops on http://{host}:{port}/ ({mode})", highlight=False)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        _server(uvicorn.Server)(config).run()
    finally:
        store.close()


def _server(base: Any) -> Any:
    """A uvicorn server class that stops on SIGTERM/SIGINT and exits 0, like the workers
    (uvicorn's own raises the signal again once it has shut down)."""

    class Server(base):  # type: ignore[misc]
        """uvicorn's server with the CLI's signal handling."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """Ask the server to exit on SIGTERM or SIGINT; restore the handlers after."""

            def stop(*_: object) -> None:
                self.should_exit = True

            previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)

    return Server
