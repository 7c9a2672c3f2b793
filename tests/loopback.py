"""Start and stop the tests' fake servers (tests/fake_gmail.py, fake_graph.py,
fake_gmail_imap.py, webhook.py) and raw listeners (faultproxy.py, smtpd.py's StallOnce) on
a free loopback port, each served by a daemon thread.

``serve_forever`` checks for ``shutdown()`` every poll interval (0.5 s by default), so every
stop waited a quarter second on average; these poll every 50 ms."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

POLL = 0.05
S = TypeVar("S", bound=socketserver.TCPServer)


def listen(server_class: type[S], handler: type[Any], *, host: str = "127.0.0.1",
           port: int = 0, tls: ssl.SSLContext | None = None) -> S:
    """A threading server bound to ``host:port`` (0: a free one), TLS-wrapped if asked."""
    server = server_class((host, port), handler)
    server.daemon_threads = True  # type: ignore[attr-defined]
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    return server


def serve(server: socketserver.BaseServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(POLL,), daemon=True)
    thread.start()
    return thread


def stop(server: socketserver.BaseServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def accept_forever(on_client: Callable[[socket.socket], None]) -> socket.socket:
    """A listener on a free loopback port whose daemon thread hands each connection to
    ``on_client`` until the listener is closed."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            on_client(client)

    threading.Thread(target=accept, daemon=True).start()
    return listener


def port(server: socketserver.BaseServer | socket.socket) -> int:
    sock = server if isinstance(server, socket.socket) else server.socket  # type: ignore[attr-defined]
    return sock.getsockname()[1]


class ServedFake:
    """A fake server in a process of its own (for benchmarks: it never competes with the
    client for the GIL). ``start(*args)`` runs there and returns ``(fake, hello)``: the fake
    (with a ``lock`` and ``stop()``), and what ``hello`` holds here. ``figures()`` asks for
    ``figures(fake)``, read under the fake's lock; ``stop()`` gives the last ones. Both
    callables must be module-level functions (the process is spawned)."""

    def __init__(self, start: Callable[..., tuple[Any, Any]], args: tuple[Any, ...],
                 figures: Callable[[Any], dict[str, Any]]) -> None:
        import multiprocessing as mp

        self._conn, child = mp.Pipe()
        self._proc = mp.get_context("spawn").Process(
            target=_serve_fake, args=(child, start, args, figures), daemon=True)
        self._proc.start()
        self.hello = self._conn.recv()

    def figures(self) -> dict[str, Any]:
        self._conn.send("figures")
        return self._conn.recv()

    def stop(self) -> dict[str, Any]:
        self._conn.send("stop")
        last = self._conn.recv()
        self._proc.join(10)
        return last


def _serve_fake(conn: Any, start: Callable[..., tuple[Any, Any]], args: tuple[Any, ...],
                figures: Callable[[Any], dict[str, Any]]) -> None:
    fake, hello = start(*args)
    conn.send(hello)
    while True:
        cmd = conn.recv()
        with fake.lock:
            conn.send(figures(fake))
        if cmd == "stop":
            fake.stop()
            return
