"""Which handler statements a pipelined batch queues: plain text writes that return no rows."""

from __future__ import annotations

import pytest
from sqlalchemy import JSON, bindparam, text
from sqlalchemy.dialects.postgresql.psycopg import dialect

from projections._writes import _plan

DIALECT = dialect()


@pytest.mark.parametrize(
    ("sql", "sent"),
    [
        ("INSERT INTO t VALUES (:a, :b)", "INSERT INTO t VALUES (%(a)s, %(b)s)"),
        ("  -- note\n/* x */ update t SET n = n + 1 WHERE k = :k", None),
        ("DELETE FROM t WHERE k = :k;", "DELETE FROM t WHERE k = %(k)s;"),
        (
            "INSERT INTO t VALUES (50%, :a::int, 'a:b')",
            "INSERT INTO t VALUES (50%%, :a::int, 'a:b')",
        ),
    ],
)
def test_plain_writes_are_queued_as_sqlalchemy_would_send_them(sql: str, sent: str | None) -> None:
    plan = _plan(text(sql), DIALECT)
    assert plan is not None
    if sent is not None:
        assert plan.sql == sent


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT n FROM t WHERE k = :k",
        "INSERT INTO t VALUES (:a) RETURNING id",
        "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
        "INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)",
        "CREATE TABLE t (k text)",
        "SAVEPOINT s",
    ],
)
def test_statements_that_may_return_rows_or_are_not_writes_go_through_sqlalchemy(sql: str) -> None:
    assert _plan(text(sql), DIALECT) is None


def test_a_clause_with_bound_types_or_values_goes_through_sqlalchemy() -> None:
    plain = text("INSERT INTO t VALUES (:a)")
    assert _plan(plain, DIALECT) is not None
    assert _plan(plain.bindparams(bindparam("a", type_=JSON)), DIALECT) is None
    assert _plan(plain.bindparams(a=1), DIALECT) is None
    assert _plan(plain, DIALECT) is not None  # cached on the clause itself, not its copies
