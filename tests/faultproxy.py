"""A loopback TCP proxy that breaks a seeded share of the requests passing through it: for
fault tests of network connectors against a real server (Dovecot)."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from dataclasses import dataclass, field

from tests import loopback

FAULTS = ("drop", "truncate", "slow")


@dataclass
class _Conn:
    pending: str | None = None  # fault for the next reply of the server


@dataclass
class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``target``. Each chunk the client sends (a command, or
    a few pipelined ones) is a request; with probability ``rate`` its reply is broken:
    ``drop`` closes the connection instead of replying, ``truncate`` forwards half the
    reply's first chunk then closes, ``slow`` delays the reply. ``rate`` may be changed
    while the proxy runs."""

    target: tuple[str, int]
    rate: float
    seed: int = 1
    port: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULTS, 0))

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._listener = loopback.accept_forever(self._connect)
        self.port = loopback.port(self._listener)

    def close(self) -> None:
        self._listener.close()

    def _connect(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        conn = _Conn()
        threading.Thread(target=self._requests, args=(client, upstream, conn),
                         daemon=True).start()
        threading.Thread(target=self._replies, args=(upstream, client, conn),
                         daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, conn: _Conn) -> None:
        with _closing(src, dst):
            while data := src.recv(65536):
                with self._lock:
                    if self._rng.random() < self.rate:
                        conn.pending = self._rng.choice(FAULTS)
                        self.faults[conn.pending] += 1
                dst.sendall(data)

    @staticmethod
    def _replies(src: socket.socket, dst: socket.socket, conn: _Conn) -> None:
        with _closing(src, dst):
            while data := src.recv(65536):
                fault, conn.pending = conn.pending, None
                if fault == "drop":
                    return
                if fault == "truncate":
                    dst.sendall(data[: max(1, len(data) // 2)])
                    return
                if fault == "slow":
                    time.sleep(0.05)
                dst.sendall(data)


@contextlib.contextmanager
def _closing(*socks: socket.socket):  # type: ignore[no-untyped-def]
    """Close both ends when either side stops, so the peer sees the break at once."""
    try:
        yield
    except OSError:
        pass
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
