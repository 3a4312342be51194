"""A disposable PostgreSQL server for the fault suite, which restarts, stops and cuts it off.

The server is a cluster of its own: ``initdb`` in a temporary directory (run as the
``postgres`` user when we are root), listening on 127.0.0.1 at a free port, with its socket
and its log in that directory. Nothing here knows of any other cluster: every ``pg_ctl`` call
names this server's data directory, and every connection this server's port. ``destroy``
stops it in immediate mode and deletes the directory; a directory left by a run that was
killed outright (its ``owner.pid`` names a dead process) is reaped when the next server is
created.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

__all__ = ["DisposableServer", "NoServer"]

PREFIX = "eventsource-fault-pg-"
MAIN_PORT = 5432  # the main cluster's port: never ours
BINARIES = ("initdb", "pg_ctl", "postgres")

# Speed over durability on disk: an immediate shutdown (a crash of the server, not of the
# machine) still loses nothing committed, as WAL reaches the kernel before a commit returns.
CONFIG = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 200
shared_buffers = 64MB
fsync = off
full_page_writes = off
synchronous_commit = on
log_min_messages = warning
log_line_prefix = '%m [%p] %b '
"""


class NoServer(Exception):
    """This machine offers no way to create a second PostgreSQL server (the reason)."""


def find_bindir() -> Path:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres`` (version 15 preferred)."""
    candidates: list[Path] = []
    if env := os.environ.get("EVENTSOURCE_FAULT_PG_BINDIR"):
        candidates.append(Path(env))
    candidates.append(Path("/usr/lib/postgresql/15/bin"))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    if os.geteuid() != 0 and (spec := importlib.util.find_spec("pgserver")) and spec.origin:
        # The embedded server's binaries (not for root: they would run as `postgres`, which
        # may not reach them).
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for bindir in candidates:
        if all((bindir / name).is_file() for name in BINARIES):
            return bindir
    raise NoServer(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) in /usr/lib/postgresql/*/bin,"
        " on PATH or in pgserver; set EVENTSOURCE_FAULT_PG_BINDIR"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never the main one)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != MAIN_PORT:
            return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


class DisposableServer:
    """One PostgreSQL server in a temporary directory: start, stop, restart, cut off clients."""

    def __init__(self, bindir: Path, root: Path, user: pwd.struct_passwd | None) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log_path = root / "server.log"
        self.user = user  # run the server as this user (we are root), else as ourselves
        self.port = 0

    # -- creation and removal ----------------------------------------------------------------

    @classmethod
    def create(cls) -> DisposableServer:
        """initdb and start a new server; ``NoServer`` if this machine cannot have one."""
        bindir = find_bindir()
        user = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise NoServer("running as root, and there is no `postgres` user") from None
        reap_stale()
        root = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
        server = cls(bindir, root, user)
        try:
            (root / "owner.pid").write_text(f"{os.getpid()}\n")
            if user is not None:
                os.chown(root, user.pw_uid, user.pw_gid)
            server._initdb()
            server._start_on_free_port()
        except BaseException:
            server.destroy()
            raise
        return server

    def destroy(self) -> None:
        """Stop the server at once (whatever its state) and delete its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30", check=False)
            pid = _read_pid(self.data / "postmaster.pid")
            if pid is not None and _is_our_postmaster(pid, self.data):
                os.kill(pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _initdb(self) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=120,
        )

    def _start_on_free_port(self) -> None:
        base = (self.data / "postgresql.conf").read_text()
        for _ in range(5):
            self.port = free_port()
            config = CONFIG.format(port=self.port, socket_dir=self.root)
            (self.data / "postgresql.conf").write_text(base + config)
            result = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_path), check=False)
            if result.returncode == 0:
                return
            if "could not bind" not in self.log_tail():
                break  # another problem than a port taken in the meantime
        raise RuntimeError(f"the fault suite's server did not start\n{self.log_tail()}")

    # -- running commands as the server's owner ------------------------------------------------

    def _run(
        self, args: list[str], *, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # Output to a file, not a pipe: the postmaster that `pg_ctl start` leaves behind must
        # not hold our pipe open.
        out = self.root / "commands.out"
        with out.open("a") as sink:
            sink.write(f"$ {' '.join(args)}\n")
            sink.flush()
            as_user = self.user is not None
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env={**os.environ, "LC_ALL": "C", "PGDATA": str(self.data)},
                timeout=timeout,
                check=False,
                text=True,
                user=self.user.pw_uid if self.user is not None else None,
                group=self.user.pw_gid if self.user is not None else None,
                extra_groups=[] if as_user else None,
            )
        if check and result.returncode != 0:
            tail = out.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{args[0]} exited {result.returncode}\n{tail}\n{self.log_tail()}")
        return result

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], timeout=90, check=check
        )

    # -- what the tests use ------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """A SQLAlchemy/libpq URL of this server (trust authentication: no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=5"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection of the test's own."""
        return psycopg.connect(self.conninfo(dbname), autocommit=True)

    def start(self) -> float:
        """Start the server and wait until it accepts connections; ``time.monotonic()`` then."""
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_path))
        self.wait_ready()
        return time.monotonic()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected; ``immediate``: a crash)."""
        self._pg_ctl("stop", "-m", mode, "-w", "-t", "60")

    def restart_immediate(self) -> float:
        """Crash the server (immediate shutdown), start it again; ``time.monotonic()`` when up."""
        self.stop("immediate")
        return self.start()

    def terminate_clients(self) -> int:
        """``pg_terminate_backend`` every client backend but our own; how many there were."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()
        return int(str(row[0])) if row else 0

    def wait_ready(self, timeout: float = 60) -> None:
        """Until a connection succeeds (after crash recovery)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def running(self) -> bool:
        pid = _read_pid(self.data / "postmaster.pid")
        return pid is not None and _is_our_postmaster(pid, self.data)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


def _is_our_postmaster(pid: int, data: Path) -> bool:
    """Whether ``pid`` is a live postgres process serving ``data`` (and so not the main one)."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(data).encode() in cmdline


def reap_stale() -> None:
    """Remove the servers of earlier runs whose test process is gone (killed outright)."""
    for root in Path("/tmp").glob(f"{PREFIX}*"):
        if not re.fullmatch(re.escape(PREFIX) + r"[\w-]+", root.name) or not root.is_dir():
            continue
        owner = _read_pid(root / "owner.pid")
        if owner is not None and _pid_alive(owner):
            continue  # a run in progress
        data = root / "data"
        pid = _read_pid(data / "postmaster.pid")
        if pid is not None and _is_our_postmaster(pid, data):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
