"""The operations page in a real browser: Playwright driving Debian's Chromium.

The browser is the system's (``apt-get install chromium``, which ``.ci/run`` does): nothing is
downloaded. Without it, or without Playwright, these tests skip and say why.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventsource import EventStore
from eventsource.ops import ops_app, read_snapshot
from projections import ProjectionWorker
from tests.integration._ops_support import (
    FAST,
    HOSTILE,
    TOKEN,
    Fragile,
    Trouble,
    make_trouble,
    run_fixed_command,
)

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="Playwright is not installed (pip install -e '.[dev]')",
    ),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="no /usr/bin/chromium: apt-get install -y chromium (as .ci/run does)",
    ),
    pytest.mark.timeout(120),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def trouble(store: EventStore) -> Trouble:
    """A stopped partition and a dead command, both with hostile text."""
    return make_trouble(store)


@pytest.fixture
def server(store: EventStore, trouble: Trouble) -> Iterator[str]:
    """The page served by uvicorn on a thread (refreshing every second); its base URL."""
    import uvicorn  # noqa: PLC0415 - only when the browser tests run

    port = _free_port()
    app = ops_app(store, token=TOKEN, refresh=1)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, name="ops-server")
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def worker(store: EventStore, trouble: Trouble) -> Iterator[ProjectionWorker]:
    """A live worker of the stopped projection."""
    w = ProjectionWorker(store, [Fragile()], **FAST)
    thread = threading.Thread(target=w.run, name="fragile-worker")
    thread.start()
    yield w
    w.stop()
    thread.join(10)


@pytest.fixture
def page(server: str) -> Iterator[Any]:
    """A Chromium page (the system's browser, headless)."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            context = browser.new_context(base_url=server)
            p = context.new_page()
            p.set_default_timeout(15_000)
            yield p
        finally:
            browser.close()


def _sign_in(page: Any, token: str) -> None:
    page.goto("/")
    page.fill("#signin input[name=token]", token)
    page.click("#signin button[type=submit]")


def test_retry_from_the_page_recovers_a_stopped_partition_and_a_dead_command(
    page: Any,
    store: EventStore,
    trouble: Trouble,
    worker: ProjectionWorker,
    tmp_path: Path,
) -> None:
    """Sign in, click retry on the stopped partition and on the dead command, and watch the
    page (refreshing by itself) show both recovered; a screenshot is kept."""
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto("/")
    expect(page.locator("#stopped")).to_have_text("1")
    expect(page.locator("#dead-letters")).to_have_text("1")

    _sign_in(page, TOKEN)
    expect(page.locator("#mode")).to_have_text("signed in")

    Fragile.fixed = True  # the operator fixed the handler and deployed it
    try:
        page.goto("/projections")
        stopped_row = page.locator("tr.stopped")
        expect(stopped_row).to_have_count(1)
        page.screenshot(path=str(tmp_path / "ops-projections-stopped.png"), full_page=True)
        stopped_row.get_by_role("button", name="Retry").click()
        expect(page).to_have_url(re.compile(r"/projections$"))
        expect(page.locator("tr.stopped")).to_have_count(0)  # the worker applied it
        page.goto("/")
        expect(page.locator("#stopped")).to_have_text("0")
        expect(page.locator("#total-lag")).to_have_text("0")
    finally:
        Fragile.fixed = False

    page.goto("/commands")
    dead_row = page.locator(f'tr[data-command="{trouble.command_id}"]')
    expect(dead_row).to_have_count(1)
    dead_row.get_by_role("button", name="Retry").click()
    handled: list[str] = []
    run_fixed_command(store, handled)  # a command worker with the fixed handler
    assert handled == [HOSTILE]
    expect(page.get_by_text("no dead letters")).to_be_visible()  # refreshed by itself
    page.goto("/")
    expect(page.locator("#dead-letters")).to_have_text("0")
    shot = tmp_path / "ops-overview-recovered.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    snapshot = read_snapshot(store)
    assert (len(snapshot.stopped), snapshot.dead_letters) == (0, 0)


def test_actions_need_the_token(page: Any, store: EventStore, trouble: Trouble) -> None:
    """Before signing in no action button shows; a wrong token is refused; a POST made by
    the page's own script without the token is refused and changes nothing."""
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto("/projections")
    expect(page.locator("tr.stopped")).to_have_count(1)
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    status = page.evaluate(
        """async (path) => {
            const csrf = document.querySelector('input[name=csrf]').value;
            const body = new URLSearchParams({csrf: csrf});
            const r = await fetch(path, {method: 'POST', body: body});
            return r.status;
        }""",
        f"/projections/{Fragile.name}/partitions/{trouble.partition}/retry",
    )
    assert status == 403
    _sign_in(page, "wrong-token-0123456789")
    expect(page.locator("#error-message")).to_have_text("wrong token")
    page.goto("/commands")
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    snapshot = read_snapshot(store)
    assert (len(snapshot.stopped), snapshot.dead_letters) == (1, 1)


def test_hostile_text_renders_as_text(page: Any, trouble: Trouble, tmp_path: Path) -> None:
    """``<script>`` in an error, a payload and a stream id shows as text and never runs."""
    from playwright.sync_api import expect  # noqa: PLC0415

    for path in ("/projections", "/commands", f"/commands/{trouble.command_id}"):
        page.goto(path)
        expect(page.get_by_text(HOSTILE, exact=False).first).to_be_attached()
        assert page.evaluate("window.pwned") is None
        assert page.locator("script:not([src])").count() == 0
    page.goto(f"/partitions/{trouble.partition}")
    expect(page.get_by_role("link", name=f"evil-{HOSTILE}").first).to_be_visible()
    assert page.evaluate("window.pwned") is None
    page.screenshot(path=str(tmp_path / "ops-hostile.png"), full_page=True)
