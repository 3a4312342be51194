"""Which failures are outages, to be waited out, and which are errors of the work in hand."""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest
from sqlalchemy import exc as sa_exc

from eventsource import DatabaseUnavailable
from eventsource._errors import is_outage


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.OperationalError("connection refused"),  # no SQLSTATE: libpq failed
        psycopg.errors.AdminShutdown(),  # 57P01
        psycopg.errors.ConnectionFailure(),  # class 08
        psycopg.InterfaceError("the connection is closed"),
        DatabaseUnavailable("127.0.0.1:5432", "connection refused"),
        sa_exc.OperationalError("SELECT 1", {}, psycopg.errors.CannotConnectNow()),
    ],
)
def test_connection_failures_are_outages(exc: BaseException) -> None:
    """Connection-class failures, however wrapped, are outages."""
    assert is_outage(exc)


@pytest.mark.parametrize(
    "exc",
    [
        # A statement before it failed in the pipeline: an OperationalError without SQLSTATE
        # that is not about the connection.
        psycopg.errors.PipelineAborted("pipeline aborted"),
        psycopg.errors.QueryCanceled(),
        psycopg.errors.DeadlockDetected(),
        psycopg.errors.UniqueViolation(),
        ValueError("a handler's own error"),
        None,
    ],
)
def test_errors_of_the_work_are_not_outages(exc: BaseException | None) -> None:
    """Statement errors, pipeline aborts and a handler's own errors are not outages."""
    assert not is_outage(exc)
