"""The shop example run as its README runs it in production: the API, a projection worker and
a command worker as separate processes, the workers SIGKILLed mid-way and restarted. Every
checked-out cart ends confirmed, charged once and confirmed once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from eventsource.fastapi import TOKEN_HEADER

from ._support import REPO_ROOT, cli_env, eventsource_command

pytestmark = pytest.mark.slow

CARTS = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """The processes of one test, each logging to a file; all killed at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> None:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.running[name] = subprocess.Popen(
                args, env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def wait_logged(self, name: str, what: str, timeout: float = 60) -> None:
        """Wait until process ``name`` has logged ``what`` (it has started)."""
        deadline = time.monotonic() + timeout
        while what not in (self.log_dir / f"{name}.log").read_text(errors="replace"):
            self.check_alive()
            assert time.monotonic() < deadline, f"{name} never logged {what!r}\n{self.logs()}"
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )

    def check_alive(self) -> None:
        for name, process in self.running.items():
            assert process.poll() is None, f"{name} exited {process.returncode}\n{self.logs()}"

    def stop_all(self) -> None:
        for process in self.running.values():
            process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def processes(database_url: str, schema: str, tmp_path: Path) -> Iterator[Processes]:
    """Processes with the shop's settings: the test's schema, its view in ``<schema>_shop``."""
    env = cli_env(database_url, EVENTSOURCE_SCHEMA=schema, SHOP_READ_SCHEMA=f"{schema}_shop")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    procs = Processes(env, tmp_path)
    yield procs
    procs.stop_all()


def _wait_up(client: httpx.Client, processes: Processes) -> None:
    for _ in range(300):
        processes.check_alive()
        try:
            if client.get("/carts/none").status_code == 404:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the API never answered\n{processes.logs()}")


def test_the_readmes_processes_survive_killed_workers(processes: Processes) -> None:
    """Checkouts made while the workers are killed and restarted all end confirmed, once."""
    port = _free_port()
    api = [sys.executable, "-m", "examples.shop", "--no-workers", "--port", str(port)]
    view = [*eventsource_command(), "projections", "run", "examples.shop.views:CartView"]
    view.append("examples.shop.payments:Confirmations")
    worker = [*eventsource_command(), "worker", "run", "examples.shop.payments", "--queue", "shop"]
    processes.start("api", api)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        _wait_up(client, processes)  # the API has upgraded the schema: the workers may start
        processes.start("view", view)
        processes.start("worker", worker)
        processes.wait_logged("view", "partition claimed")
        processes.wait_logged("worker", "worker started")
        carts = []
        view_up = True  # reads wait for the view only while one runs
        for i in range(CARTS):
            opened = client.post("/carts", json={"customer": f"c{i}"})
            assert opened.status_code == 201, opened.text
            cart_id = opened.json()["cart_id"]
            item = {"sku": "tea", "quantity": i + 1, "price_cents": 100}
            added = client.post(f"/carts/{cart_id}/items", json=item)
            if view_up:
                token = {TOKEN_HEADER: added.headers[TOKEN_HEADER]}
                seen = client.get(f"/carts/{cart_id}", headers=token)
                assert seen.status_code == 200, f"{seen.text}\n{processes.logs()}"
                assert seen.json()["total_cents"] == (i + 1) * 100
            checked = client.post(f"/carts/{cart_id}/checkout")
            assert checked.status_code == 202, checked.text
            carts.append(cart_id)
            if i == CARTS // 3:
                processes.kill("worker")
            if i == CARTS // 2:
                processes.kill("view")
                view_up = False
                processes.start("worker-2", worker)
            if i == 2 * CARTS // 3:
                processes.start("view-2", view)
        deadline = time.monotonic() + 60
        pending = set(carts)
        while pending and time.monotonic() < deadline:
            processes.check_alive()
            for cart_id in list(pending):
                if client.get(f"/carts/{cart_id}").json()["status"] == "confirmed":
                    pending.discard(cart_id)
            time.sleep(0.2)
        assert not pending, f"{len(pending)} carts not confirmed\n{processes.logs()}"
        for i, cart_id in enumerate(carts):
            types = [e["type"] for e in client.get(f"/carts/{cart_id}/events").json()]
            assert types.count("shop.PaymentCaptured") == 1, types
            assert types.count("shop.ConfirmationSent") == 1, types
            assert types[-2:] == ["shop.PaymentCaptured", "shop.ConfirmationSent"], types
            charged = client.get(f"/carts/{cart_id}/events").json()[-2]["data"]["amount_cents"]
            assert charged == (i + 1) * 100
