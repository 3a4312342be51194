"""Who may act on the operations page: the token, the session cookie and CSRF protection.

Reading is open (the server binds to 127.0.0.1 unless told otherwise); every action (retry,
skip, replay, purge) is a POST that needs both:

- the operator's token (``EVENTSOURCE_OPS_TOKEN``): given once on the page's sign-in form,
  which sets an HttpOnly session cookie holding an HMAC of the token (never the token itself),
  or with each request as ``Authorization: Bearer <token>`` or a ``token`` form field;
- a CSRF token, double-submitted: the random ``ops_csrf`` cookie (SameSite=Strict) and the
  ``csrf`` form field must match.

Every comparison is ``hmac.compare_digest``. With no token configured the page is read-only:
its buttons are hidden and every POST is refused (403).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "Guard", "csrf_ok", "new_csrf"]

CSRF_COOKIE = "ops_csrf"
SESSION_COOKIE = "ops_session"
_SESSION_CONTEXT = b"eventsource ops session v1"


class Guard:
    """The token check of one operations app; ``token`` None: read-only."""

    def __init__(self, token: str | None) -> None:
        self._token = token
        self._session = (
            None
            if token is None
            else hmac.new(token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()
        )

    @property
    def read_only(self) -> bool:
        """Whether no token is configured (no action is possible)."""
        return self._token is None

    def session_value(self) -> str:
        """The session cookie's value for a signed-in operator (an HMAC of the token)."""
        if self._session is None:
            raise RuntimeError("read-only: there is no session to open")
        return self._session

    def token_matches(self, given: str | None) -> bool:
        """Whether ``given`` is the configured token."""
        if self._token is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self._token.encode())

    def signed_in(self, cookies: Mapping[str, str]) -> bool:
        """Whether the request carries a valid session cookie."""
        value = cookies.get(SESSION_COOKIE)
        if self._session is None or not value:
            return False
        return hmac.compare_digest(value.encode(), self._session.encode())

    def authorized(
        self, cookies: Mapping[str, str], headers: Mapping[str, str], form: Mapping[str, str]
    ) -> bool:
        """Whether a POST carries the token: a session, a bearer header or a form field."""
        if self._token is None:
            return False
        bearer = headers.get("authorization", "")
        scheme, _, value = bearer.partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(value.strip()):
            return True
        return self.signed_in(cookies) or self.token_matches(form.get("token"))


def new_csrf() -> str:
    """A fresh random CSRF token."""
    return secrets.token_urlsafe(32)


def csrf_ok(cookies: Mapping[str, str], form: Mapping[str, str]) -> bool:
    """Whether the form's ``csrf`` field matches the ``ops_csrf`` cookie (both present)."""
    cookie = cookies.get(CSRF_COOKIE, "")
    field = form.get("csrf", "")
    if not cookie or not field:
        return False
    return hmac.compare_digest(cookie.encode(), field.encode())
