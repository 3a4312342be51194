"""The `eventsource` command line (typer): schema, projections, command workers, the demo.

Every command takes ``--database-url`` (default: ``EVENTSOURCE_DATABASE_URL``, else the
embedded server) and ``--schema``. Exit codes: 0 success, 1 failure, 2 bad usage; errors are
one line that says what to do. Bad usage (an option out of range, a bad name, a bad
``EVENTSOURCE_*`` variable) names the option or variable at fault, and nothing is written.

One module per command group (``_db``, ``_projections``, ``_worker``, ``_commands``,
``_ops``, ``_relay``, ``_demo``), on what ``_app`` shares (the application, the settings and
the store, the one-line error reporting, ``--json`` output and ``--yes`` confirmation) and on
``_options``: the common options, which ``with_settings`` gives every command. The groups are
registered here, in the order of ``--help``.
"""

from __future__ import annotations

from eventsource.cli._app import app, main
from eventsource.cli._commands import commands_app
from eventsource.cli._db import db_app
from eventsource.cli._demo import demo
from eventsource.cli._ops import ops_app_cli
from eventsource.cli._projections import projections_app
from eventsource.cli._relay import relay_app
from eventsource.cli._worker import worker_app

app.add_typer(db_app, name="db")
app.add_typer(projections_app, name="projections")
app.add_typer(worker_app, name="worker")
app.add_typer(commands_app, name="commands")
app.add_typer(ops_app_cli, name="ops")
app.add_typer(relay_app, name="relay")
app.command("demo")(demo)

__all__ = ["app", "main"]
