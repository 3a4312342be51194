"""The operations app: a Starlette application, server-rendered, mountable in any ASGI app.

``build_app`` puts the parts together: the pages (``_pages``), the actions (``_actions``),
``/metrics`` (``_metrics``), ``/healthz`` and ``/readyz``, and the static script that refreshes
the page by itself (no front-end build step, nothing fetched from elsewhere). Every response
carries a strict Content-Security-Policy: scripts and styles come from this app only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventsource.db import fetch, safe_url
from eventsource.ops._metrics import CONTENT_TYPE, render_metrics
from eventsource.ops._replays import Replays
from eventsource.ops._security import CSRF_COOKIE, Guard, new_csrf
from eventsource.store import EventStore

__all__ = [
    "OpsState",
    "base_path",
    "build_app",
    "error_page",
    "path_int",
    "render",
    "set_cookie",
    "templates",
]

_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        b" connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


@dataclass
class OpsState:
    """What the endpoints of one app share: the store, the token guard, the replays."""

    store: EventStore
    guard: Guard
    replays: Replays
    templates: Jinja2Templates
    refresh: float  # seconds between the page's own refreshes (0: never)
    owns_store: bool  # the app opened the store (and closes it at shutdown)


def templates() -> Jinja2Templates:
    """The page templates, every value escaped (autoescape on for every template)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("eventsource.ops", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return Jinja2Templates(env=env)


def _secure_headers(app: ASGIApp) -> ASGIApp:
    """Wrap ``app`` so that every HTTP response carries the security headers."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped


def base_path(request: Request) -> str:
    """Where the app is mounted (``""`` at the root): every link starts with it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def path_int(request: Request, name: str, low: int, high: int) -> int | None:
    """Path parameter ``name`` as an integer from ``low`` to ``high``, or None if it is not one.

    Only ASCII digits count: ``str.isdigit`` also accepts characters such as ``"²"`` that
    ``int`` refuses.
    """
    text = request.path_params[name]
    if text.isascii() and text.isdigit() and len(text) <= 19 and low <= int(text) <= high:
        return int(text)
    return None


def render(
    state: OpsState, request: Request, name: str, context: dict[str, Any], status: int = 200
) -> Response:
    """Render template ``name`` (only the live part when the page's script asks for it),
    setting the CSRF cookie if the browser has none yet."""
    csrf = request.cookies.get(CSRF_COOKIE) or new_csrf()
    full = {
        "request": request,
        "base": base_path(request),
        "csrf": csrf,
        "read_only": state.guard.read_only,
        "signed_in": state.guard.signed_in(request.cookies),
        "refresh": state.refresh,
        "fragment": request.headers.get("x-ops-fragment") == "1",
        "database": safe_url(state.store.url),
        "schema": state.store.schema,
        "page": "",
        **context,
    }
    response = state.templates.TemplateResponse(request, name, full, status_code=status)
    if request.cookies.get(CSRF_COOKIE) != csrf:
        set_cookie(request, response, CSRF_COOKIE, csrf)
    return response


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    """Set an HttpOnly, SameSite=Strict cookie scoped to the app's path (Secure on https)."""
    response.set_cookie(
        name,
        value,
        path=base_path(request) or "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def error_page(state: OpsState, request: Request, status: int, message: str) -> Response:
    """An error page (403, 404, 409, 422…) saying what was wrong."""
    return render(state, request, "error.html", {"status": status, "message": message}, status)


def build_app(state: OpsState) -> Starlette:
    """The Starlette application of the operations page over ``state``."""
    from eventsource.ops._actions import action_routes  # noqa: PLC0415 - they import this module
    from eventsource.ops._pages import page_routes  # noqa: PLC0415

    def metrics(request: Request) -> Response:
        return Response(render_metrics(state.store), media_type=CONTENT_TYPE)

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    def readyz(request: Request) -> Response:
        try:
            with state.store._raw() as conn:
                fetch(conn, "SELECT 1")
        except Exception as exc:  # any failure to reach the database means not ready
            return PlainTextResponse(f"database unreachable: {type(exc).__name__}", 503)
        return PlainTextResponse("ok")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if state.owns_store:  # run standalone: close what the app opened
            state.store.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_page(state, request, 404, "no such page")

    routes = [
        *page_routes(state),
        *action_routes(state),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Mount("/static", StaticFiles(packages=[("eventsource.ops", "static")]), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found},
        middleware=[Middleware(_HeadersMiddleware)],
    )
    app.state.ops = state
    return app


class _HeadersMiddleware:
    """ASGI middleware adding the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = _secure_headers(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
