"""The actions: sign-in, retry and skip of a stopped partition, replay, retry and purge of
dead commands.

Each is a POST of a url-encoded form. In order: the guard (read-only mode, the CSRF token, the
operator's token: 403, nothing changed), then the target (404 for an unknown projection,
partition or command, 409 when it is not in a state the action applies to), then the form's
values (422 out of range), then the store-level operation the CLI uses too
(``projections.retry``/``skip``/``replay``, ``CommandQueue.retry``/``purge``). A done action
redirects (303) back to its page.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

import projections
from eventsource._checks import BIGINT_MAX, check_name
from eventsource._errors import EventSourceError
from eventsource.commands import MAX_DELAY, CommandQueue
from eventsource.ops._app import OpsState, base_path, error_page, path_int, set_cookie
from eventsource.ops._security import SESSION_COOKIE, csrf_ok

__all__ = ["MAX_FORM_BYTES", "action_routes"]

MAX_FORM_BYTES = 65536
_FORM_TYPE = "application/x-www-form-urlencoded"


class _Refused(Exception):
    """An action refused with an HTTP status and a message for the error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _form(request: Request) -> dict[str, str]:
    """The url-encoded form of a POST (empty for any other body); 413 past MAX_FORM_BYTES."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _Refused(413, "the form is too large")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _FORM_TYPE:
        return {}
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def _path_int(request: Request, name: str, what: str, high: int) -> int:
    """Path parameter ``name`` as an integer from 0 to ``high`` (404 otherwise)."""
    value = path_int(request, name, 0, high)
    if value is None:
        raise _Refused(404, f"no {what} {request.path_params[name]!r}")
    return value


def _form_number(form: dict[str, str], name: str, default: float, low: float, high: float) -> float:
    """The numeric form field ``name`` (``default`` if absent) from ``low`` to ``high`` (422)."""
    raw = form.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _Refused(422, f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise _Refused(422, f"{name} must be from {low:g} to {high:g}, got {raw!r}")
    return value


class _Actions:
    """The action endpoints of one app."""

    def __init__(self, state: OpsState) -> None:
        self.state = state

    async def _act(
        self,
        request: Request,
        action: Callable[[dict[str, str]], str],
        *,
        signed: bool = True,
    ) -> Response:
        """Check the guard (and the token when ``signed``), run ``action`` on a thread with
        the form; redirect to the page it returns, or show why it was refused."""
        guard = self.state.guard
        try:
            form = await _form(request)
            if guard.read_only:
                raise _Refused(403, "read-only: set EVENTSOURCE_OPS_TOKEN to enable actions")
            if not csrf_ok(request.cookies, form):
                raise _Refused(403, "missing or wrong CSRF token: reload the page and try again")
            if signed and not guard.authorized(request.cookies, request.headers, form):
                raise _Refused(403, "sign in with the operations token first")
            target = await run_in_threadpool(action, form)
        except _Refused as refused:
            return error_page(self.state, request, refused.status, refused.message)
        except EventSourceError as exc:  # the target changed state meanwhile
            return error_page(self.state, request, 409, str(exc))
        return RedirectResponse(f"{base_path(request)}{target}", status_code=303)

    async def sign_in(self, request: Request) -> Response:
        """Check the token of the sign-in form and open a session (a cookie)."""

        def check(form: dict[str, str]) -> str:
            if not self.state.guard.token_matches(form.get("token")):
                raise _Refused(403, "wrong token")
            return "/"

        response = await self._act(request, check, signed=False)
        if response.status_code == 303:
            set_cookie(request, response, SESSION_COOKIE, self.state.guard.session_value())
        return response

    async def sign_out(self, request: Request) -> Response:
        """Close the session."""
        response = await self._act(request, lambda form: "/", signed=False)
        if response.status_code == 303:
            response.delete_cookie(SESSION_COOKIE, path=base_path(request) or "/")
        return response

    def _checkpoint(self, request: Request) -> projections.PartitionStatus:
        """The (projection, partition) of the path (404 if the projection has no checkpoint
        in that partition)."""
        name = request.path_params["name"]
        partition = _path_int(request, "partition", "partition", self.state.store.partitions - 1)
        for row in projections.status(self.state.store):
            if row.projection == name and row.partition == partition:
                return row
        raise _Refused(404, f"no projection {name!r} in partition {partition}")

    async def partition_action(self, request: Request) -> Response:
        """Retry or skip the event a partition stopped on (409 if it is not stopped)."""
        verb = request.path_params["verb"]
        if verb not in ("retry", "skip"):
            return error_page(self.state, request, 404, f"no action {verb!r}")

        def act(form: dict[str, str]) -> str:
            row = self._checkpoint(request)
            if row.error is None:
                raise _Refused(409, f"{row.projection} partition {row.partition} is not stopped")
            operation = projections.retry if verb == "retry" else projections.skip
            operation(self.state.store, row.projection, row.partition)
            return "/projections"

        return await self._act(request, act)

    async def replay(self, request: Request) -> Response:
        """Start rebuilding a projection from offset 0 (its progress shows on the page)."""
        name = request.path_params["name"]

        def act(form: dict[str, str]) -> str:
            replays = self.state.replays
            if not replays.can_replay(name):
                known = {row.projection for row in projections.status(self.state.store)}
                if name not in known:
                    raise _Refused(404, f"no projection named {name!r}")
                raise _Refused(
                    409,
                    f"this server does not have the code of {name!r}: start it with"
                    " `eventsource ops serve --projection MODULE:CLASS` to replay it",
                )
            replays.start(name)
            return "/projections"

        return await self._act(request, act)

    async def command_retry(self, request: Request) -> Response:
        """Give a dead command more attempts (409 if it is not dead)."""

        def act(form: dict[str, str]) -> str:
            command_id = _path_int(request, "command_id", "command", BIGINT_MAX)
            queue = CommandQueue(self.state.store)
            info = queue.get(command_id) if command_id >= 1 else None
            if info is None:
                raise _Refused(404, f"no command {command_id} (done ones are deleted)")
            if info.status != "dead":
                raise _Refused(409, f"command {command_id} is {info.status}, not dead")
            attempts = int(_form_number(form, "attempts", 1, 1, 100))
            queue.retry(command_id, attempts=attempts)
            return "/commands"

        return await self._act(request, act)

    async def purge(self, request: Request) -> Response:
        """Delete the dead commands (of one queue, or all) older than ``older_than`` seconds."""

        def act(form: dict[str, str]) -> str:
            older_than = _form_number(form, "older_than", 0.0, 0.0, MAX_DELAY)
            queue: Any = form.get("queue") or None
            if queue is not None:
                try:
                    queue = check_name(queue, "queue")
                except ValueError as exc:
                    raise _Refused(422, str(exc)) from None
            CommandQueue(self.state.store).purge(older_than=older_than, queue=queue)
            return "/commands"

        return await self._act(request, act)


def action_routes(state: OpsState) -> list[Route]:
    """The routes of the actions (POST only)."""
    actions = _Actions(state)
    post = ["POST"]
    return [
        Route("/signin", actions.sign_in, methods=post),
        Route("/signout", actions.sign_out, methods=post),
        Route(
            "/projections/{name}/partitions/{partition}/{verb:str}",
            actions.partition_action,
            methods=post,
        ),
        Route("/projections/{name}/replay", actions.replay, methods=post),
        Route("/commands/purge", actions.purge, methods=post),
        Route("/commands/{command_id}/retry", actions.command_retry, methods=post),
    ]
