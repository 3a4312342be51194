"""``python -m examples.shop``: serve the shop's API (uvicorn), workers included by default."""

from __future__ import annotations

from typing import Annotated

import typer

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[
        bool, typer.Option(help="run the view, the reactor and the command worker in-process")
    ] = True,
) -> None:
    """Serve the shop on the store of EVENTSOURCE_DATABASE_URL (else the embedded server)."""
    import uvicorn  # noqa: PLC0415 - only serving needs it

    from .app import create_app  # noqa: PLC0415 - --help needs no application

    uvicorn.run(create_app(workers=workers), host=host, port=port)


if __name__ == "__main__":
    cli()
