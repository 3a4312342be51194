"""The operations page over HTTP (Starlette's TestClient): pages, actions, bad input."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import projections
from eventsource import CommandQueue, EventStore
from eventsource.ops import ops_app, read_snapshot
from tests.integration._ops_support import (
    FAST,
    HOSTILE,
    TOKEN,
    Fragile,
    TestClient,
    Trouble,
    csrf_of,
    dead_command,
    make_trouble,
    run_fixed_command,
    sign_in,
)


@pytest.fixture
def trouble(store: EventStore) -> Trouble:
    """A stopped partition and a dead command in the test's store."""
    return make_trouble(store)


@pytest.fixture
def client(store: EventStore) -> Iterator[TestClient]:
    """A client of the app with a token configured (not signed in)."""
    with TestClient(ops_app(store, token=TOKEN, refresh=0)) as c:
        yield c


@pytest.fixture
def operator(client: TestClient) -> TestClient:
    """The client, signed in."""
    assert sign_in(client).status_code == 303
    return client


def post(client: TestClient, path: str, **form: Any) -> Any:
    """POST ``form`` with the page's CSRF token, without following the redirect."""
    data = {"csrf": csrf_of(client), **form}
    return client.post(path, data=data, follow_redirects=False)


def stopped(store: EventStore) -> list[int]:
    """The partitions of Fragile stopped on an error."""
    return [r.partition for r in projections.status(store) if r.error is not None]


def test_every_page_renders(client: TestClient, trouble: Trouble) -> None:
    """Overview, projections, a projection, the queue, a command, a stream and a partition."""
    for path in (
        "/",
        "/projections",
        f"/projections/{Fragile.name}",
        "/commands",
        f"/commands/{trouble.command_id}",
        "/streams",
        "/streams?stream=acc-1",
        f"/partitions/{trouble.partition}?after=0&limit=5",
        f"/streams?partition={trouble.partition}",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "text/html" in response.headers["content-type"]
        assert "script-src 'self'" in response.headers["content-security-policy"]


def test_the_overview_shows_the_figures(
    client: TestClient, store: EventStore, trouble: Trouble
) -> None:
    """The tiles hold the snapshot's figures: events, lag, stopped partitions, dead letters."""
    page = client.get("/").text
    snapshot = read_snapshot(store)
    assert f'id="events">{snapshot.events}<' in page
    assert 'id="stopped">1<' in page
    assert 'id="dead-letters">1<' in page
    assert f'id="total-lag">{snapshot.total_lag}<' in page


def test_hostile_text_is_escaped_everywhere(client: TestClient, trouble: Trouble) -> None:
    """A stream id, an error and a payload holding ``<script>`` render as text."""
    for path in (
        "/projections",
        "/commands",
        f"/commands/{trouble.command_id}",
        f"/partitions/{trouble.partition}",
        "/streams?stream=evil-" + HOSTILE,
    ):
        page = client.get(path).text
        assert HOSTILE not in page, path
        assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page, path


def test_no_secret_on_any_page(database_url: str, schema: str) -> None:
    """The database URL's password and the token never appear on a page."""
    url = database_url.replace("postgres@", "postgres:hunter2secret@", 1)
    store = EventStore.from_url(url, schema=schema, partitions=4)
    store.upgrade()
    try:
        with TestClient(ops_app(store, token=TOKEN)) as c:
            assert sign_in(c).status_code == 303
            for path in ("/", "/projections", "/commands", "/streams", "/metrics"):
                text = c.get(path).text
                assert "hunter2secret" not in text and TOKEN not in text, path
            assert TOKEN not in str(c.cookies.values())
    finally:
        store.close()


def test_retry_and_skip_of_a_stopped_partition(
    operator: TestClient, store: EventStore, trouble: Trouble
) -> None:
    """Retry clears the error (a fixed handler then applies the event); skip moves past it."""
    path = f"/projections/{Fragile.name}/partitions/{trouble.partition}"
    response = post(operator, f"{path}/retry")
    assert response.status_code == 303
    assert response.headers["location"] == "/projections"
    assert stopped(store) == []
    projections.run(store, [Fragile()], stop_when_caught_up=True, **FAST)
    assert stopped(store) == [trouble.partition]  # still poison: stopped again

    assert post(operator, f"{path}/skip").status_code == 303
    projections.run(store, [Fragile()], stop_when_caught_up=True, **FAST)
    assert stopped(store) == []
    assert read_snapshot(store).total_lag == 0
    assert post(operator, f"{path}/retry").status_code == 409  # not stopped any more


def test_retry_and_purge_of_dead_commands(
    operator: TestClient, store: EventStore, trouble: Trouble
) -> None:
    """Retry makes a dead command pending (a fixed handler then runs it); purge deletes."""
    response = post(operator, f"/commands/{trouble.command_id}/retry", attempts="2")
    assert response.status_code == 303
    assert response.headers["location"] == "/commands"
    handled: list[str] = []
    run_fixed_command(store, handled)
    assert handled == [HOSTILE]
    assert CommandQueue(store).get(trouble.command_id) is None
    assert post(operator, f"/commands/{trouble.command_id}/retry").status_code == 404

    again = dead_command(store)
    assert post(operator, "/commands/purge", queue="other").status_code == 303
    assert CommandQueue(store).get(again) is not None  # another queue's: kept
    assert post(operator, "/commands/purge", queue="mail").status_code == 303
    assert CommandQueue(store).get(again) is None


def test_an_action_with_a_bearer_token_or_a_token_field_needs_no_session(
    client: TestClient, store: EventStore, trouble: Trouble
) -> None:
    """Scripts may send the token with the request (still with the CSRF pair)."""
    path = f"/commands/{trouble.command_id}/retry"
    csrf = csrf_of(client)
    response = client.post(
        path,
        data={"csrf": csrf},
        headers={"Authorization": f"Bearer {TOKEN}"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    info = CommandQueue(store).get(trouble.command_id)
    assert info is not None and info.status == "pending"


@pytest.mark.parametrize(
    ("how", "form", "headers"),
    [
        ("no session and no token", {}, {}),
        ("a wrong token field", {"token": "wrong-token-0123456789"}, {}),
        ("a wrong bearer token", {}, {"Authorization": "Bearer wrong-token-0123456789"}),
    ],
)
def test_an_action_without_the_token_is_refused(  # noqa: PLR0917 - fixtures and parameters
    client: TestClient,
    store: EventStore,
    trouble: Trouble,
    how: str,
    form: dict[str, str],
    headers: dict[str, str],
) -> None:
    """403 and nothing changed, for every action."""
    csrf = csrf_of(client)
    for path in (
        f"/projections/{Fragile.name}/partitions/{trouble.partition}/retry",
        f"/projections/{Fragile.name}/partitions/{trouble.partition}/skip",
        f"/projections/{Fragile.name}/replay",
        f"/commands/{trouble.command_id}/retry",
        "/commands/purge",
    ):
        response = client.post(
            path, data={"csrf": csrf, **form}, headers=headers, follow_redirects=False
        )
        assert response.status_code == 403, (how, path)
    assert stopped(store) == [trouble.partition]
    assert read_snapshot(store).dead_letters == 1


def test_a_wrong_sign_in_token_is_refused(client: TestClient) -> None:
    """A wrong token opens no session."""
    response = sign_in(client, "wrong-token-0123456789")
    assert response.status_code == 403
    assert "ops_session" not in response.cookies


@pytest.mark.parametrize("csrf", [None, "", "forged-csrf-token"])
def test_an_action_without_the_csrf_token_is_refused(
    operator: TestClient, store: EventStore, trouble: Trouble, csrf: str | None
) -> None:
    """A signed-in operator's POST without the matching CSRF field: 403, nothing changed."""
    data = {} if csrf is None else {"csrf": csrf}
    for path in (
        f"/projections/{Fragile.name}/partitions/{trouble.partition}/retry",
        f"/commands/{trouble.command_id}/retry",
        "/commands/purge",
    ):
        assert operator.post(path, data=data, follow_redirects=False).status_code == 403
    assert stopped(store) == [trouble.partition]
    assert read_snapshot(store).dead_letters == 1


def test_read_only_without_a_token(store: EventStore, trouble: Trouble) -> None:
    """No token configured: no buttons, no sign-in form, every POST refused."""
    with TestClient(ops_app(store, read_only=True)) as c:
        for path in ("/projections", "/commands"):
            page = c.get(path).text
            assert "read-only" in page
            assert "/retry" not in page and "/purge" not in page and "/signin" not in page
        csrf = csrf_of(c)
        for path in ("/signin", f"/commands/{trouble.command_id}/retry", "/commands/purge"):
            response = c.post(path, data={"csrf": csrf, "token": TOKEN}, follow_redirects=False)
            assert response.status_code == 403
    assert read_snapshot(store).dead_letters == 1


def test_buttons_show_only_once_signed_in(client: TestClient, trouble: Trouble) -> None:
    """A token is configured: the sign-in form first, the action buttons after."""
    page = client.get("/projections").text
    assert 'id="signin"' in page and "/retry" not in page
    assert sign_in(client).status_code == 303
    page = client.get("/projections").text
    assert "/retry" in page and "/skip" in page and 'id="signin"' not in page


def test_cookies_are_http_only_and_same_site_strict(client: TestClient) -> None:
    """The CSRF and session cookies are HttpOnly and SameSite=Strict."""
    first = client.get("/")
    assert "samesite=strict" in first.headers["set-cookie"].lower()
    assert "httponly" in first.headers["set-cookie"].lower()
    signed = sign_in(client)
    assert "samesite=strict" in signed.headers["set-cookie"].lower()


@pytest.mark.parametrize(
    "path",
    [
        "/projections/no.such.projection",
        "/commands/999999",
        "/commands/abc",
        "/partitions/4",
        "/partitions/-1",
        "/partitions/x",
        "/partitions/\u00b2",  # a digit to str.isdigit, not to int
        "/commands/\u00b2",
        "/streams?stream=no-such-stream",
        "/no/such/page",
    ],
)
def test_unknown_things_are_404(client: TestClient, path: str) -> None:
    """Unknown projections, commands, partitions and streams: 404."""
    assert client.get(path).status_code == 404


def test_unknown_targets_of_actions_are_404(operator: TestClient, trouble: Trouble) -> None:
    """Acting on an unknown projection, partition or command: 404."""
    for path in (
        "/projections/no.such/partitions/0/retry",
        f"/projections/{Fragile.name}/partitions/4/retry",
        f"/projections/{Fragile.name}/partitions/99999999999999999999/skip",
        f"/projections/{Fragile.name}/partitions/0/explode",
        "/projections/no.such/replay",
        "/commands/999999/retry",
        "/commands/\u00b2/retry",
        f"/projections/{Fragile.name}/partitions/\u00b2/retry",
    ):
        assert post(operator, path).status_code == 404, path


@pytest.mark.parametrize(
    "path",
    [
        "/streams?stream=acc-1&limit=0",
        "/streams?stream=acc-1&limit=1001",
        "/streams?stream=acc-1&after=-1",
        "/streams?stream=acc-1&after=x",
        "/streams?partition=4",
        "/streams?partition=-2",
        "/partitions/0?after=-5",
        "/partitions/0?limit=100000",
        "/partitions/0?after=9223372036854775808",
        "/commands?limit=0",
        "/commands?queue=" + "q" * 1000,
    ],
)
def test_query_parameters_out_of_range_are_422(client: TestClient, path: str) -> None:
    """Query parameters out of range or malformed: 422, saying which."""
    response = client.get(path)
    assert response.status_code == 422
    assert "must" in response.text or "longer than" in response.text


def test_form_values_out_of_range_are_422(operator: TestClient, trouble: Trouble) -> None:
    """Attempts and ages out of range: 422, nothing changed."""
    assert post(operator, f"/commands/{trouble.command_id}/retry", attempts="0").status_code == 422
    assert post(operator, "/commands/purge", older_than="-1").status_code == 422
    assert post(operator, "/commands/purge", older_than="nan").status_code == 422
    info = CommandQueue(operator.app.state.ops.store).get(trouble.command_id)  # type: ignore[attr-defined]
    assert info is not None and info.status == "dead"


def test_replay_needs_the_projections_code(operator: TestClient, trouble: Trouble) -> None:
    """A projection the app was not given cannot be replayed from the page (409)."""
    assert post(operator, f"/projections/{Fragile.name}/replay").status_code == 409


def test_replay_rebuilds_with_progress(store: EventStore, trouble: Trouble) -> None:
    """With the projection's code, replay runs in the background until done."""
    Fragile.fixed = True
    try:
        with TestClient(ops_app(store, token=TOKEN, projections=[Fragile()])) as c:
            assert sign_in(c).status_code == 303
            Fragile.seen.clear()
            assert post(c, f"/projections/{Fragile.name}/replay").status_code == 303
            job = c.app.state.ops.replays.jobs[Fragile.name]  # type: ignore[attr-defined]
            deadline = time.monotonic() + 20
            while job.state == "running" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (job.state, job.error) == ("done", None)
            assert "replay done" in c.get("/projections").text
    finally:
        Fragile.fixed = False
    assert stopped(store) == []
    assert read_snapshot(store).total_lag == 0
    assert sorted(set(Fragile.seen)) == sorted(
        {e.stream_id for p in range(4) for e in store.read_partition(p)}
    )


def test_health_endpoints(client: TestClient) -> None:
    """/healthz answers while the process is up, /readyz while the database answers."""
    assert client.get("/healthz").text == "ok"
    assert client.get("/readyz").status_code == 200


def test_readyz_fails_when_the_database_is_unreachable(schema: str) -> None:
    """/readyz is 503 when the database cannot be reached; /healthz still 200."""
    store = EventStore.from_url(
        "postgresql://postgres@127.0.0.1:1/none", schema=schema, partitions=4
    )
    try:
        with TestClient(ops_app(store, read_only=True)) as c:
            assert c.get("/healthz").status_code == 200
            response = c.get("/readyz")
            assert response.status_code == 503
            assert "127.0.0.1:1" not in response.text
    finally:
        store.close()


def test_the_app_mounts_inside_another(store: EventStore, trouble: Trouble) -> None:
    """Mounted under /ops, its links, forms and cookies live under /ops."""
    outer = Starlette(routes=[Mount("/ops", ops_app(store, token=TOKEN))])
    with TestClient(outer) as c:
        page = c.get("/ops/projections")
        assert page.status_code == 200
        assert 'href="/ops/commands"' in page.text and 'action="/ops/signin"' in page.text
        assert "path=/ops" in page.headers["set-cookie"].lower()
        csrf = csrf_of(c, "/ops/")
        signed = c.post("/ops/signin", data={"token": TOKEN, "csrf": csrf}, follow_redirects=False)
        assert signed.status_code == 303 and signed.headers["location"] == "/ops/"
        response = c.post(
            f"/ops/commands/{trouble.command_id}/retry",
            data={"csrf": csrf},
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert c.get("/ops/metrics").status_code == 200
