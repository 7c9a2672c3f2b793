"""A tiny IMAP4rev1 responder that speaks like Gmail, for the X-GM-EXT-1 code path.

Dovecot has no Gmail extensions, so this server implements just what the connector uses:
CAPABILITY (with X-GM-EXT-1 and AUTH=XOAUTH2), LOGIN, AUTHENTICATE XOAUTH2, LIST, STATUS,
SELECT/EXAMINE, UID SEARCH, UID FETCH (X-GM-THRID X-GM-MSGID X-GM-LABELS, INTERNALDATE,
BODY.PEEK[HEADER.FIELDS (...)]), NOOP and LOGOUT. Like Gmail it answers FETCH items in its
own order (Gmail ids first), quotes some labels, sends one as a literal, and keeps every
message in "[Gmail]/All Mail" with a UIDVALIDITY of its own.
"""

from __future__ import annotations

import base64
import re
import socketserver
import time
from dataclasses import dataclass, field

from replytime.sources.headers import header_block_end
from tests import loopback

ALL_MAIL = "[Gmail]/All Mail"
UIDVALIDITY = 11
CAPABILITY = (
    b"IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS "
    b"COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED "
    b"LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584 SASL-IR AUTH=XOAUTH2 "
    b"AUTH=PLAIN AUTH=OAUTHBEARER"
)
FOLDERS = (
    (b"(\\HasNoChildren)", "INBOX"),
    (b"(\\HasChildren \\Noselect)", "[Gmail]"),
    (b"(\\All \\HasNoChildren)", ALL_MAIL),
    (b"(\\HasNoChildren \\Sent)", "[Gmail]/Sent Mail"),
    (b"(\\HasNoChildren \\Important)", "[Gmail]/Important"),
)
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"|\(([^)]*)\)|(\S+)')


@dataclass
class GmailMessage:
    uid: int
    thrid: int
    msgid: int
    labels: tuple[bytes, ...]  # as sent on the wire: b"\\Inbox", b'"Customers/Hot"', ...
    internaldate: str  # "02-Nov-2026 14:05:00 +0000"
    raw: bytes


@dataclass
class FakeGmail:
    """Server state, shared with the test: the mailbox and what clients did."""

    user: str = "sales@acme.example"
    password: str = "app-password"
    token: str = "ya29.test-access-token"
    messages: list[GmailMessage] = field(default_factory=list)
    auth_strings: list[bytes] = field(default_factory=list)  # decoded XOAUTH2 responses
    commands: list[bytes] = field(default_factory=list)  # every command, tag stripped
    selected: list[str] = field(default_factory=list)
    port: int = 0
    _server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> FakeGmail:
        state = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                _Session(state, self.rfile, self.wfile).run()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = loopback.listen(socketserver.ThreadingTCPServer, Handler)
        self.port = loopback.port(self._server)
        loopback.serve(self._server)
        return self

    def stop(self) -> None:
        loopback.stop(self._server)
        self._server = None

    @property
    def uidnext(self) -> int:
        return max((m.uid for m in self.messages), default=0) + 1


def _unquote(raw: bytes) -> bytes:
    return re.sub(rb"\\(.)", rb"\1", raw)


def _uids(spec: bytes, top: int) -> set[int]:
    out: set[int] = set()
    for part in spec.split(b","):
        if b":" in part:
            a, b = part.split(b":")
            lo = int(a)
            hi = top if b == b"*" else int(b)
            lo, hi = min(lo, hi), max(lo, hi)
            out.update(range(lo, hi + 1))
        else:
            out.add(top if part == b"*" else int(part))
    return out


class _Session:
    def __init__(self, state: FakeGmail, rfile: object, wfile: object) -> None:
        self.s = state
        self.r = rfile
        self.w = wfile
        self.authed = False
        self.folder: str | None = None

    def send(self, data: bytes) -> None:
        self.w.write(data)  # type: ignore[attr-defined]

    def run(self) -> None:
        self.send(b"* OK Gimap ready for requests from 127.0.0.1 fake\r\n")
        try:
            while True:
                line = self.r.readline()  # type: ignore[attr-defined]
                if not line:
                    return
                tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                self.s.commands.append(rest)
                if not self.command(tag, rest):
                    return
                self.w.flush()  # type: ignore[attr-defined]
        except (TimeoutError, ConnectionError):
            return

    def ok(self, tag: bytes, text: bytes = b"Success") -> bool:
        self.send(tag + b" OK " + text + b"\r\n")
        return True

    def command(self, tag: bytes, rest: bytes) -> bool:
        verb, _, args = rest.partition(b" ")
        verb = verb.upper()
        if verb == b"CAPABILITY":
            self.send(b"* CAPABILITY " + CAPABILITY + b"\r\n")
            return self.ok(tag, b"Thats all she wrote!")
        if verb == b"LOGOUT":
            self.send(b"* BYE LOGOUT Requested\r\n")
            self.ok(tag, b"73 good day (Success)")
            self.w.flush()  # type: ignore[attr-defined]
            return False
        if verb == b"NOOP":
            return self.ok(tag)
        if verb == b"LOGIN":
            parts = [_unquote(m.group(1)) if m.group(1) is not None else m.group(3)
                     for m in _ARG.finditer(args)]
            if parts == [self.s.user.encode(), self.s.password.encode()]:
                self.authed = True
                return self.ok(tag, self.s.user.encode() + b" authenticated (Success)")
            self.send(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
            return True
        if verb == b"AUTHENTICATE":
            mech, _, initial = args.partition(b" ")
            if mech.upper() != b"XOAUTH2":
                self.send(tag + b" NO Unsupported mechanism\r\n")
                return True
            if not initial:
                self.send(b"+ \r\n")
                self.w.flush()  # type: ignore[attr-defined]
                initial = self.r.readline().strip()  # type: ignore[attr-defined]
            decoded = base64.b64decode(initial)
            self.s.auth_strings.append(decoded)
            expected = (f"user={self.s.user}\x01auth=Bearer {self.s.token}\x01\x01").encode()
            if decoded == expected:
                self.authed = True
                return self.ok(tag, self.s.user.encode() + b" authenticated (Success)")
            self.send(b"+ eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIn0=\r\n")
            self.w.flush()  # type: ignore[attr-defined]
            self.r.readline()  # type: ignore[attr-defined]
            self.send(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
            return True
        if not self.authed:
            self.send(tag + b" BAD Command not allowed before authentication\r\n")
            return True
        if verb in (b"LIST", b"XLIST"):
            for flags, name in FOLDERS:
                self.send(b'* LIST %s "/" "%s"\r\n' % (flags, name.encode()))
            return self.ok(tag)
        if verb == b"STATUS":
            name = self._folder_arg(args)
            n = len(self.s.messages) if name == ALL_MAIL else 0
            self.send(b'* STATUS "%s" (MESSAGES %d UIDVALIDITY %d UIDNEXT %d)\r\n' % (
                name.encode(), n, UIDVALIDITY, self.s.uidnext if name == ALL_MAIL else 1))
            return self.ok(tag)
        if verb in (b"SELECT", b"EXAMINE"):
            name = self._folder_arg(args)
            if name not in {f for _, f in FOLDERS} or name == "[Gmail]":
                self.send(tag + b" NO [NONEXISTENT] Unknown Mailbox\r\n")
                return True
            self.folder = name
            self.s.selected.append(name)
            n = len(self.s.messages) if name == ALL_MAIL else 0
            self.send(b"* FLAGS (\\Answered \\Flagged \\Draft \\Deleted \\Seen)\r\n"
                      b"* OK [PERMANENTFLAGS ()] Flags permitted.\r\n"
                      b"* OK [UIDVALIDITY %d] UIDs valid.\r\n* %d EXISTS\r\n* 0 RECENT\r\n"
                      b"* OK [UIDNEXT %d] Predicted next UID.\r\n"
                      % (UIDVALIDITY, n, self.s.uidnext if name == ALL_MAIL else 1))
            return self.ok(tag, b"[READ-ONLY] " + name.encode() + b" selected. (Success)")
        if verb == b"UID":
            return self.uid_command(tag, args)
        self.send(tag + b" BAD Unknown command\r\n")
        return True

    def _folder_arg(self, args: bytes) -> str:
        m = _ARG.match(args)
        assert m is not None
        raw = _unquote(m.group(1)) if m.group(1) is not None else m.group(3)
        return raw.decode()

    def _mailbox(self) -> list[GmailMessage]:
        return self.s.messages if self.folder == ALL_MAIL else []

    def uid_command(self, tag: bytes, args: bytes) -> bool:
        sub, _, rest = args.partition(b" ")
        box = self._mailbox()
        top = max((m.uid for m in box), default=0)
        if sub.upper() == b"SEARCH":
            crit = rest.split()
            if crit[0].upper() == b"ALL":
                found = [m.uid for m in box]
            elif crit[0].upper() == b"UID":
                wanted = _uids(crit[1], top) if box else set()
                found = [m.uid for m in box if m.uid in wanted]
            else:
                self.send(tag + b" BAD Unsupported search\r\n")
                return True
            self.send(b"* SEARCH" + b"".join(b" %d" % u for u in found) + b"\r\n")
            return self.ok(tag, b"SEARCH completed (Success)")
        if sub.upper() == b"FETCH":
            spec, _, items = rest.partition(b" ")
            wanted = _uids(spec, top) if box else set()
            m = re.search(rb"HEADER\.FIELDS \(([^)]*)\)", items)
            names = [n.lower() for n in m.group(1).split()] if m else []
            for seq, msg in enumerate(box, 1):
                if msg.uid not in wanted:
                    continue
                block = self._fields(msg.raw, names)
                labels = b" ".join(msg.labels)  # wire form; b"{5}\r\nHello" is a literal
                # Gmail's order: its own ids first, then UID, then the rest.
                self.send(
                    b"* %d FETCH (X-GM-THRID %d X-GM-MSGID %d X-GM-LABELS (%s) UID %d "
                    b'INTERNALDATE "%s" BODY[HEADER.FIELDS (%s)] {%d}\r\n%s)\r\n'
                    % (seq, msg.thrid, msg.msgid, labels, msg.uid,
                       msg.internaldate.encode(), m.group(1) if m else b"", len(block),
                       block)
                )
            return self.ok(tag, b"Success")
        self.send(tag + b" BAD Unsupported UID command\r\n")
        return True

    @staticmethod
    def _fields(raw: bytes, names: list[bytes]) -> bytes:
        """What HEADER.FIELDS returns: the named fields, in order, then a blank line."""
        end = header_block_end(raw)
        head = raw[:end] if end >= 0 else raw
        out, keep = [], False
        for line in head.splitlines(keepends=True):
            if line in (b"\r\n", b"\n"):
                break
            if line[:1] in (b" ", b"\t"):
                if keep:
                    out.append(line)
                continue
            keep = line.split(b":", 1)[0].strip().lower() in names
            if keep:
                out.append(line)
        return b"".join(out) + b"\r\n"


def internaldate(epoch: int) -> str:
    return time.strftime("%d-%b-%Y %H:%M:%S +0000", time.gmtime(epoch))
