"""A TCP proxy in front of the test server, for outages without restarting the server.

``Proxy.down()`` closes every connection through it and refuses new ones (they are accepted
and closed at once, so the client sees the server go away); ``Proxy.up()`` lets them through
again. Clients connect to ``proxy.url`` instead of the server's URL.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from sqlalchemy.engine import URL, make_url


class Proxy:
    def __init__(self, target_url: str | URL) -> None:
        self._target = make_url(target_url)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._up = True
        self._closed = False
        self.accepted = 0  # connections let through (a measure of how many were opened)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> URL:
        local = self._target.difference_update_query(["host", "port"])  # a Unix socket's
        return local.set(host="127.0.0.1", port=self.port)

    def _connect(self) -> socket.socket:
        """A connection to the server: its Unix socket when the URL names one (``?host=``
        a directory, as the embedded server's does), else its TCP host and port."""
        query = self._target.query
        directory = query.get("host")
        if isinstance(directory, str) and directory.startswith("/"):
            port = query.get("port") or self._target.port or 5432
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                unix.connect(f"{directory}/.s.PGSQL.{port}")
            except OSError:
                unix.close()
                raise
            return unix
        return socket.create_connection(
            (self._target.host or "127.0.0.1", self._target.port or 5432)
        )

    def down(self) -> None:
        """Cut every connection and refuse new ones."""
        with self._lock:
            self._up = False
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def up(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._closed = True
        self.down()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                client.close()
                continue
            try:
                server = self._connect()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
                self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
