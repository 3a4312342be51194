"""The operations page's pieces that need no database: the token guard, CSRF, health lines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eventsource.ops import projection_problems
from eventsource.ops._security import CSRF_COOKIE, SESSION_COOKIE, Guard, csrf_ok, new_csrf
from projections import PartitionStatus

TOKEN = "operator-token-0123456789"


def test_read_only_guard_authorizes_nothing() -> None:
    """Without a token nothing passes, whatever the request carries."""
    guard = Guard(None)
    assert guard.read_only
    assert not guard.token_matches(TOKEN)
    assert not guard.authorized({}, {"authorization": f"Bearer {TOKEN}"}, {"token": TOKEN})
    with pytest.raises(RuntimeError):
        guard.session_value()


def test_the_token_passes_as_a_session_a_bearer_header_or_a_form_field() -> None:
    """Each of the three ways authorizes; a wrong or empty value does not."""
    guard = Guard(TOKEN)
    session = guard.session_value()
    assert TOKEN not in session  # the cookie holds an HMAC of the token, not the token
    assert guard.authorized({SESSION_COOKIE: session}, {}, {})
    assert guard.authorized({}, {"authorization": f"Bearer {TOKEN}"}, {})
    assert guard.authorized({}, {}, {"token": TOKEN})
    for cookies, headers, form in (
        ({SESSION_COOKIE: "0" * 64}, {}, {}),
        ({}, {"authorization": "Bearer nope"}, {}),
        ({}, {"authorization": TOKEN}, {}),
        ({}, {}, {"token": ""}),
        ({}, {}, {}),
    ):
        assert not guard.authorized(cookies, headers, form)
    assert Guard("another-token-0123456789").session_value() != session


def test_csrf_needs_the_cookie_and_the_same_field() -> None:
    """Double submit: both present and equal."""
    value = new_csrf()
    assert len(value) >= 32 and value != new_csrf()
    assert csrf_ok({CSRF_COOKIE: value}, {"csrf": value})
    assert not csrf_ok({CSRF_COOKIE: value}, {"csrf": new_csrf()})
    assert not csrf_ok({CSRF_COOKIE: value}, {})
    assert not csrf_ok({}, {"csrf": value})
    assert not csrf_ok({CSRF_COOKIE: ""}, {"csrf": ""})


def _row(partition: int, position: int, head: int, error: str | None = None) -> PartitionStatus:
    now = datetime.now(UTC)
    return PartitionStatus(
        "balances", partition, position, head, None, None, now,
        error, None if error is None else position + 1, 1 if error else 0,
        now if error else None, None,
    )  # fmt: skip


def test_projection_problems_name_stopped_and_lagging_partitions() -> None:
    """A stopped partition always; lag only past the threshold given."""
    rows = [_row(0, 10, 10), _row(1, 5, 9, "Traceback…\nValueError: boom"), _row(2, 0, 50)]
    assert projection_problems(rows) == [
        "balances partition 1: stopped on an error at position 6: ValueError: boom"
    ]
    assert projection_problems(rows, max_lag=10) == [
        "balances partition 1: stopped on an error at position 6: ValueError: boom",
        "balances partition 2: lags 50 events (more than 10)",
    ]
    assert projection_problems(rows[:1], max_lag=0) == []


def test_the_ops_token_setting_is_checked_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """EVENTSOURCE_OPS_TOKEN: blank is unset, too short is refused without echoing it, and
    the settings' repr masks it."""
    from eventsource._config import Settings  # noqa: PLC0415

    monkeypatch.setenv("EVENTSOURCE_OPS_TOKEN", "  ")
    assert Settings().ops_token is None
    monkeypatch.setenv("EVENTSOURCE_OPS_TOKEN", "short-secret")
    with pytest.raises(ValueError, match="EVENTSOURCE_OPS_TOKEN: must be 16") as caught:
        Settings()
    assert "short-secret" not in str(caught.value)
    monkeypatch.setenv("EVENTSOURCE_OPS_TOKEN", TOKEN)
    settings = Settings()
    assert settings.ops_token is not None and settings.ops_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)
