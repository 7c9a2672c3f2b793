"""A real SMTP server on loopback for the delivery tests: aiosmtpd with STARTTLS required
before AUTH (or implicit TLS), a self-signed certificate made with the ``openssl`` CLI
(tests/dovecot.py ``make_cert``), one user, and scripted faults: replies given to the next
DATA commands instead of accepting the message.

``messages`` holds what was accepted, with the envelope and whether TLS and AUTH were in
place when it was.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests import loopback
from tests.dovecot import free_port, make_cert

USER = "reports@acme.example"
PASSWORD = "s3cret pass-word"
TOKEN = "ya29.a0-good-access-token"  # the access token XOAUTH2 accepts


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None


@dataclass
class _Handler:
    messages: list[Received] = field(default_factory=list)
    data_faults: list[str] = field(default_factory=list)  # replies to the next DATA
    lock: threading.Lock = field(default_factory=threading.Lock)
    auth_strings: list[bytes] = field(default_factory=list)  # XOAUTH2 responses received
    # Exchange Online's way instead: ask the identity platform (tests/fake_graph.py
    # ``smtp_login``) whether the token is valid for the user; refused: 535 5.7.3 at once.
    token_check: Callable[[str, str], bool] | None = None

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:  # noqa: N802
        """SASL XOAUTH2 as Gmail's SMTP does it: the initial response in the AUTH line;
        a refused token gets a 334 challenge (base64 JSON), the client's empty answer,
        then 535."""
        if len(args) < 2:
            answer = await server.challenge_auth("")
            raw = answer if isinstance(answer, bytes) else b""
        else:
            raw = base64.b64decode(args[1])
        self.auth_strings.append(raw)
        if self.token_check is not None:
            m = re.fullmatch(rb"user=([^\x01]+)\x01auth=Bearer ([^\x01]+)\x01\x01", raw)
            if m and self.token_check(m[1].decode(), m[2].decode()):
                return AuthResult(success=True, handled=False,
                                  auth_data=LoginPassword(m[1], b""))
            return AuthResult(success=False, handled=False,
                              message="535 5.7.3 Authentication unsuccessful")
        if raw == f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01".encode():
            return AuthResult(success=True, handled=False,
                              auth_data=LoginPassword(USER.encode(), b""))
        await server.challenge_auth(json.dumps({
            "status": "400", "schemes": "Bearer",
            "scope": "https://mail.google.com/"}).encode())
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        with self.lock:
            if self.data_faults:
                return self.data_faults.pop(0)
            login = session.auth_data.login.decode() if isinstance(
                session.auth_data, LoginPassword) else None
            self.messages.append(Received(
                envelope.mail_from or "", list(envelope.rcpt_tos),
                bytes(envelope.original_content or envelope.content or b""),
                session.ssl is not None  # STARTTLS
                or server.transport.get_extra_info("ssl_object") is not None,  # implicit
                login))
        return "250 2.0.0 OK queued"


def _authenticator(server: Any, session: Session, envelope: Envelope, mechanism: str,
                   auth_data: Any) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
          and auth_data.password == PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class SMTPServer:
    """``security``: ``starttls`` (plain connection, STARTTLS required before AUTH and
    MAIL) or ``ssl`` (TLS from the first byte)."""

    def __init__(self, root: Path, security: str = "starttls",
                 token_check: Callable[[str, str], bool] | None = None) -> None:
        self.cert = make_cert(root / "smtp-tls")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.cert.with_name("key.pem"))
        self.handler = _Handler(token_check=token_check)
        self.port = free_port()
        self.security = security
        kw: dict[str, Any] = {"authenticator": _authenticator, "auth_required": True,
                              "auth_require_tls": True}
        if security == "ssl":
            # TLS from the first byte, which aiosmtpd's own check does not see
            kw.update(ssl_context=ctx, auth_require_tls=False)
        else:
            kw.update(tls_context=ctx, require_starttls=True)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     server_hostname="localhost", **kw)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def fail_next(self, *replies: str) -> None:
        self.handler.data_faults.extend(replies)

    def __enter__(self) -> SMTPServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def toml(self, **extra: object) -> str:
        """The ``[delivery]`` section for this server (password from REPLYTIME_SMTP_PW)."""
        values: dict[str, object] = {
            "from": "replytime@acme.example", "to": ["boss@acme.example"],
            "host": "localhost", "port": self.port, "security": self.security,
            "username": USER, "password_env": "REPLYTIME_SMTP_PW", "ca_file": str(self.cert),
            "timeout": 5, "retries": 2, **extra}
        return "[delivery]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


class StallOnce:
    """A loopback listener that holds its first ``stalls`` connections open without a byte
    (a hung server: the client times out), then forwards the next ones to ``target``."""

    def __init__(self, target: tuple[str, int], stalls: int = 1) -> None:
        self.target = target
        self.stalls = stalls
        self.connections = 0
        self._held: list[socket.socket] = []
        self._listener = loopback.accept_forever(self._connect)
        self.port = loopback.port(self._listener)

    def close(self) -> None:
        self._listener.close()
        for s in self._held:
            s.close()

    def _connect(self, client: socket.socket) -> None:
        self.connections += 1
        if self.connections <= self.stalls:
            self._held.append(client)
            return
        upstream = socket.create_connection(self.target)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
