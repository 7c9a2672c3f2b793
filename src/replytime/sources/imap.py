"""IMAP connector: headers of the configured folders into the cache, incremental and resumable.

How a sync goes:

- Connect with implicit TLS (``ssl``), ``starttls`` or, to a loopback address only, plaintext
  (``none``). Certificates are verified; ``ca_file`` trusts a private CA. The password comes
  from ``password_env``, ``password_file`` or ``password_command``; ``oauth_token_file``
  (a google-auth authorized-user JSON) logs in to Gmail with XOAUTH2 instead; ``oauth =
  "microsoft"`` logs in to Exchange Online with XOAUTH2 and an msal token (``msauth.py``).
- Per folder, the account state keeps ``uidvalidity`` and ``last_uid``. ``STATUS`` tells
  whether anything arrived; only then the folder is examined (read-only) and
  ``UID SEARCH UID last+1:*`` lists the new UIDs. A changed UIDVALIDITY resyncs that folder
  and removes its old locations.
- Headers only: ``BODY.PEEK[HEADER.FIELDS (...)]`` with ``INTERNALDATE`` (and, on Gmail,
  ``X-GM-THRID X-GM-MSGID X-GM-LABELS``), in chunks of UIDs. Two FETCH commands are kept in
  flight so the server reads the next chunk while this process takes the current one; the
  responses are read straight off imaplib's connection because imapclient's generic parser
  is several times slower than the server.
- This process only cuts the byte stream into chunks' answers (following literal lengths)
  and writes the cache; the answers and their header blocks are parsed in worker processes
  (``sources.pool``, as for the offline import), in order. One process doing all three
  was the limit from a local server: ~6 s of CPU per 100,000 messages.
- Every few chunks are written with ``Cache.write_stored`` together with the new state in
  one transaction: a sync killed at any moment resumes from the last committed chunk. When
  the connection breaks, the chunks that had arrived whole are committed first.
- Dropped connections and timeouts are retried with exponential backoff and full jitter;
  after ``retries`` failures in a row the sync stops with SourceUnreachable (exit 4),
  keeping every committed chunk.
"""

from __future__ import annotations

import calendar
import contextlib
import functools
import imaplib
import io
import json
import os
import re
import socket
import ssl
import tempfile
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imapclient import IMAPClient, imap_utf7
from imapclient.exceptions import LoginError

from replytime.config import Account, Config, is_loopback, read_secret
from replytime.errors import AuthError, ConfigError, ReplytimeError, SourceUnreachable
from replytime.model import StoredMessage, stored_message
from replytime.progress import Progress
from replytime.sources import SyncStats
from replytime.sources.headers import WANTED_HEADERS, parse_header_block
from replytime.sources.pool import default_workers, ordered_map
from replytime.sources.retry import backoff_delay

ACCOUNT_TYPE = "imap"
STATE_VERSION = 1
DEFAULT_CHUNK = 1000  # UIDs per FETCH: see benchmarks/bench_imap.py for the measurements
COMMIT_CHUNKS = 10  # FETCH chunks per cache transaction
# Parser processes run at a lower priority than the sync, which reads the socket and writes
# the cache: the bottleneck. Measured on 2 cores: 100,000 messages in 3.6-5.9 s instead of
# 5.3-7.2 s at equal priority.
WORKER_NICE = 10
DEFAULT_RETRIES = 5
DEFAULT_RETRY_DELAY = 1.0  # seconds; doubled per retry (capped), full jitter
DEFAULT_TIMEOUT = 60.0
GMAIL_ALL_MAIL = "[Gmail]/All Mail"
MICROSOFT_HOST = "outlook.office365.com"  # Exchange Online IMAP (with oauth = "microsoft")
# Gmail's system labels as the Gmail API names them, so lead filters work for both sources.
_GMAIL_SYSTEM_LABELS = {
    b"\\Inbox": "INBOX",
    b"\\Sent": "SENT",
    b"\\Important": "IMPORTANT",
    b"\\Starred": "STARRED",
    b"\\Draft": "DRAFT",
    b"\\Spam": "SPAM",
    b"\\Trash": "TRASH",
}
# Errors after which reconnecting may help: the server went away, a timeout, a reset.
_TRANSIENT: tuple[type[BaseException], ...] = (OSError, imaplib.IMAP4.abort, EOFError)


# -- settings ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """An IMAP account's options, validated. Never holds the password itself."""

    account: str
    host: str
    port: int
    security: str  # ssl | starttls | none
    username: str
    folders: tuple[str, ...]  # empty: INBOX and the \Sent folder (or Gmail's All Mail)
    ca_file: str | None = None
    oauth_token_file: str | None = None
    oauth: str | None = None  # "microsoft": XOAUTH2 with an msal token (sources/msauth.py)
    chunk: int = DEFAULT_CHUNK
    retries: int = DEFAULT_RETRIES
    retry_delay: float = DEFAULT_RETRY_DELAY
    timeout: float = DEFAULT_TIMEOUT
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_account(cls, account: Account) -> Settings:
        o = account.options
        key = f"accounts.{account.name}"
        security = str(o.get("security", "ssl")).lower()
        if security not in ("ssl", "starttls", "none"):
            raise ConfigError(f"{key}.security", "must be ssl, starttls or none")
        oauth = o.get("oauth")
        if oauth is not None and str(oauth).lower() != "microsoft":
            raise ConfigError(f"{key}.oauth", "must be \"microsoft\" (Gmail tokens: "
                              "oauth_token_file)")
        oauth = "microsoft" if oauth is not None else None
        if oauth and o.get("oauth_token_file"):
            raise ConfigError(f"{key}.oauth", "give oauth or oauth_token_file, not both")
        host = o.get("host", MICROSOFT_HOST if oauth else None)
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(f"{key}.host", "is required (the IMAP server's name)")
        host = host.strip()
        if security == "none" and not is_loopback(host):
            raise ConfigError(
                f"{key}.security",
                "'none' (no TLS) is only allowed to a loopback address such as 127.0.0.1; "
                "use ssl or starttls",
            )
        port = o.get("port", 993 if security == "ssl" else 143)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{key}.port", "must be a port number")
        username = o.get("username")
        if not isinstance(username, str) or not username:
            raise ConfigError(f"{key}.username", "is required")
        folders = o.get("folders", [])
        if isinstance(folders, str):
            folders = [folders]
        if not isinstance(folders, list) or not all(isinstance(f, str) and f for f in folders):
            raise ConfigError(f"{key}.folders", "must be a list of folder names")
        ca_file = o.get("ca_file")
        if ca_file is not None:
            ca_file = os.path.expanduser(os.path.expandvars(str(ca_file)))
            if not os.path.isfile(ca_file):
                raise ConfigError(f"{key}.ca_file", f"{ca_file} does not exist")
        token_file = o.get("oauth_token_file")
        if token_file is not None:
            token_file = os.path.expanduser(os.path.expandvars(str(token_file)))
        return cls(
            account=account.name,
            host=host,
            port=port,
            security=security,
            username=username,
            folders=tuple(dict.fromkeys(folders)),
            ca_file=ca_file,
            oauth_token_file=token_file,
            oauth=oauth,
            chunk=_positive(o, "fetch_chunk", DEFAULT_CHUNK, int, key),
            retries=int(_positive(o, "retries", DEFAULT_RETRIES, int, key, allow_zero=True)),
            retry_delay=float(_positive(o, "retry_delay", DEFAULT_RETRY_DELAY, float, key,
                                        allow_zero=True)),
            timeout=float(_positive(o, "timeout", DEFAULT_TIMEOUT, float, key)),
            options=o,
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def _positive(
    o: dict[str, Any], name: str, default: Any, kind: type, key: str, allow_zero: bool = False
) -> Any:
    value = o.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or (
        kind is int and not isinstance(value, int)
    ):
        raise ConfigError(f"{key}.{name}", f"must be a {'whole ' if kind is int else ''}number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}.{name}", "must be positive")
    return value


def get_password(account: Account) -> str:
    """The account's password from its env var, file or command; never from the config
    itself or the command line, and never included in any message."""
    key = f"accounts.{account.name}"
    value = read_secret(account.options, "password", key)
    if value is not None:
        return value
    raise ConfigError(
        key, "needs password_env, password_file or password_command (or oauth_token_file)"
    )


# -- XOAUTH2 (Gmail) -----------------------------------------------------------------------
def xoauth2_string(username: str, access_token: str) -> bytes:
    """The SASL XOAUTH2 initial response (before base64), as Google documents it."""
    return f"user={username}\x01auth=Bearer {access_token}\x01\x01".encode()


def oauth_access_token(token_file: str, account: str) -> str:
    """A valid access token from a google-auth authorized-user JSON file, refreshed (and the
    file rewritten, mode 0600) when it has expired."""
    key = f"accounts.{account}.oauth_token_file"
    from google.auth.exceptions import GoogleAuthError
    from google.oauth2.credentials import Credentials

    try:
        info = json.loads(Path(token_file).read_text(encoding="utf-8"))
        creds = Credentials.from_authorized_user_info(info)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {token_file} ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(key, f"{token_file} is not an authorized-user token ({exc})") from None
    if creds.valid and creds.token:
        return str(creds.token)
    try:
        from google.auth.transport.requests import Request

        creds.refresh(Request())
    except GoogleAuthError as exc:
        raise AuthError(
            f"the OAuth token in {token_file} could not be refreshed ({type(exc).__name__}); "
            "authorize the account again"
        ) from None
    _write_private(Path(token_file), creds.to_json())
    return str(creds.token)


def microsoft_access_token(account: Account) -> str:
    """An access token for Exchange Online IMAP (IMAP.AccessAsUser.All, or the app's
    ``https://outlook.office365.com/.default``) from the account's msal settings."""
    from replytime.sources import msauth

    o = account.options
    # App-only IMAP reads the mailbox it logs in as.
    s = msauth.settings(Account(account.name, account.type,
                                {"mailbox": o.get("username", "me"), **o}))
    return msauth.TokenSource(s, s.imap_scopes()).token()


def _write_private(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- connecting ----------------------------------------------------------------------------
def _ssl_context(s: Settings) -> ssl.SSLContext:
    # With ca_file only that CA is trusted (a private CA); otherwise the system store.
    ctx = ssl.create_default_context(cafile=s.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _tls_failure(s: Settings, exc: ssl.SSLError) -> SourceUnreachable:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    hint = (
        " (the ca_file given does not vouch for it)" if s.ca_file
        else "; if the server uses a private or self-signed CA, set ca_file in the account"
    )
    return SourceUnreachable(
        f"IMAP server {s.where}: TLS certificate verification failed ({reason}){hint}"
    )


def connect(s: Settings, account: Account) -> IMAPClient:
    """Open, secure and authenticate a connection. Transient failures raise OSError or
    imaplib.IMAP4.abort (the caller retries); permanent ones (a refused login, an untrusted
    certificate, no STARTTLS) raise AuthError, SourceUnreachable or ConfigError."""
    password = None if s.oauth_token_file or s.oauth else get_password(account)
    ctx = _ssl_context(s) if s.security != "none" else None
    try:
        client = IMAPClient(
            s.host, port=s.port, ssl=s.security == "ssl", ssl_context=ctx, timeout=s.timeout,
            use_uid=True,
        )
    except ssl.SSLCertVerificationError as exc:
        raise _tls_failure(s, exc) from None
    try:
        if s.security == "starttls":
            if b"STARTTLS" not in client.capabilities():
                raise SourceUnreachable(
                    f"IMAP server {s.where} does not offer STARTTLS; use security = \"ssl\" "
                    "(port 993) if it speaks implicit TLS"
                )
            try:
                client.starttls(ctx)
            except ssl.SSLCertVerificationError as exc:
                raise _tls_failure(s, exc) from None
        try:
            if s.oauth == "microsoft":
                client.oauth2_login(s.username, microsoft_access_token(account))
            elif s.oauth_token_file:
                token = oauth_access_token(s.oauth_token_file, s.account)
                client.oauth2_login(s.username, token)
            else:
                assert password is not None
                client.login(s.username, password)
        except LoginError as exc:
            if "socket error" in str(exc):
                # The connection broke during LOGIN (imapclient wraps that in LoginError
                # too): a transient fault to retry, not a refused password.
                raise ConnectionError(str(exc)) from None
            raise AuthError(_auth_message(s, str(exc))) from None
        return client
    except BaseException:
        _drop(client)
        raise


def _auth_message(s: Settings, server_said: str) -> str:
    # The server's words help ("[AUTHENTICATIONFAILED]", "[ALERT] Application-specific
    # password required"); they never contain the password we sent.
    said = server_said.strip().strip("[]'\"b")[:200]
    how = "XOAUTH2 token" if s.oauth_token_file or s.oauth else "password"
    extra = (
        " (an IMAP token needs the https://mail.google.com/ scope)" if s.oauth_token_file
        else f"; if the sign-in is old, run `replytime auth {s.account}`" if s.oauth else ""
    )
    return f"IMAP server {s.where} refused the {how} for {s.username}{extra}: {said}"


def _drop(client: IMAPClient) -> None:
    """Close without waiting on the server (it may be gone, or mid-response)."""
    with contextlib.suppress(Exception):  # already closed or broken: nothing to release
        client.shutdown()


# -- FETCH responses -----------------------------------------------------------------------
# One token of a FETCH response line: ( ) "quoted" {literal} or an atom, where an atom
# may carry a section spec with spaces and parentheses: BODY[HEADER.FIELDS (FROM TO)].
_TOKEN = re.compile(
    rb'[ ]*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|\{(\d+)\+?\}\r?\n?$|'
    rb'((?:[^\s()"\[]|\[[^\]]*\])+(?:<\d+>)?))'
)
_FETCH_START = re.compile(rb"\* \d+ FETCH ")
_TAGGED = re.compile(rb"([A-Z0-9]+) (OK|NO|BAD)\b ?(.*)", re.S)
_FAST = re.compile(rb'\(UID (\d+) INTERNALDATE "([^"\\]*)" BODY\[[^\]]*\] \{\d+\}\r\n\Z')
_LITERAL_END = re.compile(rb"\{(\d+)\+?\}\r?\n$")
_MAX_LINE = 1_000_000  # imaplib's limit for one response line
_MONTHS = {m.encode(): i for i, m in enumerate(calendar.month_abbr) if m}

Value = bytes | None | list["Value"]


def _parse_items(parts: list[bytes], literals: list[bytes]) -> list[Value]:
    """The parenthesised list of a FETCH response as nested lists of bytes/None."""
    stack: list[list[Value]] = [[]]
    li = 0
    for part in parts:
        pos = 0
        end = len(part.rstrip(b"\r\n"))
        while pos < end:
            m = _TOKEN.match(part, pos)
            if m is None or m.end() == pos:
                raise imaplib.IMAP4.error(f"unparsable FETCH response near {part[pos:pos+40]!r}")
            pos = m.end()
            opened, closed, quoted, literal, atom = m.groups()
            if opened:
                stack.append([])
            elif closed:
                done = stack.pop()
                stack[-1].append(done)
            elif quoted is not None:
                if b"\\" in quoted:
                    quoted = re.sub(rb"\\(.)", rb"\1", quoted)
                stack[-1].append(quoted)
            elif literal is not None:
                stack[-1].append(literals[li])
                li += 1
                break  # the literal ends this line
            elif atom is not None:
                stack[-1].append(None if atom == b"NIL" else atom)
    top = stack[0]
    return top[0] if top and isinstance(top[0], list) else top  # type: ignore[return-value]


def parse_internaldate(value: bytes) -> int:
    """INTERNALDATE ("02-Nov-2026 14:05:00 +0100") in UTC epoch milliseconds."""
    date, clock, zone = value.split()
    hh, mm, ss = clock.split(b":")
    return (_day_start(date) + int(hh) * 3600 + int(mm) * 60 + int(ss) - _zone_offset(zone)) \
        * 1000


# A mailbox has few distinct days and zones: cached, they cost a dict look-up per message.
@functools.lru_cache(maxsize=4096)
def _day_start(date: bytes) -> int:
    day, mon, year = date.split(b"-")
    return calendar.timegm((int(year), _MONTHS[mon.capitalize()], int(day), 0, 0, 0, 0, 0, 0))


@functools.lru_cache(maxsize=256)
def _zone_offset(zone: bytes) -> int:
    return (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60) * (-1 if zone[:1] == b"-" else 1)


def gmail_labels(values: Sequence[Value]) -> tuple[str, ...]:
    out = []
    for v in values:
        if not isinstance(v, bytes):
            continue
        if v in _GMAIL_SYSTEM_LABELS:
            out.append(_GMAIL_SYSTEM_LABELS[v])
        else:
            out.append(imap_utf7.decode(v) if b"&" in v else v.decode("utf-8", "replace"))
    return tuple(out)


class _Pipeline:
    """UID FETCH commands for successive chunks, ``depth`` of them in flight at once.

    Yields each chunk's untagged responses as the raw bytes the server sent: this process
    only finds where they end (following literal lengths); the worker that parses the
    headers parses the responses too, so the reader stays cheap."""

    def __init__(self, client: IMAPClient, chunks: Sequence[Sequence[int]], items: bytes,
                 depth: int = 2) -> None:
        self.imap: imaplib.IMAP4 = client._imap
        self.chunks = chunks
        self.items = items
        self.depth = depth
        self.pending: deque[tuple[bytes, int]] = deque()  # (tag, chunk index)
        self.next = 0
        self.commands = 0

    def _send(self) -> None:
        if self.next >= len(self.chunks):
            return
        tag = self.imap._new_tag()
        # imaplib registers every new tag; we read this one's answer ourselves.
        self.imap.tagged_commands.pop(tag, None)
        self.imap.send(b"%s UID FETCH %s %s\r\n" % (tag, _uid_set(self.chunks[self.next]),
                                                      self.items))
        self.pending.append((tag, self.next))
        self.next += 1
        self.commands += 1

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while len(self.pending) < self.depth and self.next < len(self.chunks):
            self._send()
        while self.pending:
            tag, index = self.pending.popleft()
            raw = self._read_until(tag)
            self._send()  # keep the server busy while this chunk is parsed and written
            yield index, raw

    def _read_until(self, tag: bytes) -> bytes:
        """The untagged responses before ``tag``'s completion, raw; raises on BYE, a NO/BAD
        completion or a connection closed mid-answer."""
        # imaplib's own buffered reader of the socket (plain or TLS), read directly: its
        # readline/read wrappers cost more than the framing itself.
        f = self.imap.file
        parts: list[bytes] = []
        while True:
            line = f.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise imaplib.IMAP4.abort(
                    "the server closed the connection" if len(line) < _MAX_LINE
                    else "response line too long")
            if not line.startswith(b"* "):
                break
            if line.startswith(b"* BYE"):
                raise imaplib.IMAP4.abort(line[5:].strip().decode("utf-8", "replace"))
            parts.append(line)
            # A line ending in {n} is followed by n bytes of literal, then the rest of
            # the same response (one more line, or more literals).
            while line.endswith((b"}\r\n", b"}\n")) and \
                    (m := _LITERAL_END.search(line)) is not None:
                size = int(m.group(1))
                literal = f.read(size)
                line = f.readline(_MAX_LINE)
                if len(literal) < size or not line.endswith(b"\n"):
                    raise imaplib.IMAP4.abort("the server closed the connection")
                parts.append(literal)
                parts.append(line)
        m = _TAGGED.match(line)
        if m is None or m.group(1) != tag:
            raise imaplib.IMAP4.abort(f"unexpected response {line[:80]!r}")
        if m.group(2) != b"OK":
            raise imaplib.IMAP4.error(
                f"UID FETCH failed: {m.group(3).strip().decode('utf-8', 'replace')}"
            )
        return b"".join(parts)


def _responses(raw: bytes) -> Iterator[dict[bytes, Value]]:
    """The FETCH responses in a chunk's raw untagged data, each as a dict of its items (the
    header section under ``BODY[``)."""
    f = io.BytesIO(raw)
    while line := f.readline():
        parts, literals = [line], []
        while (m := _LITERAL_END.search(line)) is not None:
            literals.append(f.read(int(m.group(1))))
            line = f.readline()
            parts.append(line)
        m = _FETCH_START.match(parts[0])
        if m is None:
            continue  # other untagged data (EXISTS, FLAGS...) does not matter here
        # Fast path for the usual shape (Dovecot answers in the order asked): one literal,
        # nothing after it. Anything else takes the tokenizer.
        fast = _FAST.match(parts[0], m.end())
        if fast is not None and len(parts) == 2 and parts[1] == b")\r\n":
            yield {b"UID": fast.group(1), b"INTERNALDATE": fast.group(2), b"BODY[": literals[0]}
            continue
        parts[0] = parts[0][m.end():]
        d: dict[bytes, Value] = {}
        it = iter(_parse_items(parts, literals))
        for k in it:
            if isinstance(k, bytes):
                value = next(it, None)
                if k.startswith(b"BODY["):  # the header section, whatever its spelling
                    d.setdefault(b"BODY[", value)
                else:
                    d[k] = value
        yield d


def _uid_set(uids: Sequence[int]) -> bytes:
    """A compact UID set: runs of consecutive UIDs become ranges (1:500,502,510:600)."""
    out: list[str] = []
    start = prev = uids[0]
    for u in uids[1:]:
        if u == prev + 1:
            prev = u
            continue
        out.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = u
    out.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(out).encode()


# -- the sync ------------------------------------------------------------------------------
@dataclass
class _Run:
    settings: Settings
    account: Account
    cache: Any
    keep: tuple[str, ...]
    items: bytes
    progress: Progress | None
    stats: SyncStats
    state: dict[str, Any]  # what is committed in the cache, kept in step with it
    full: bool
    gmail: bool = False
    # With full=True, the folders still to refetch from UID 1 (None: not listed yet).
    fresh_folders: set[str] | None = None


def sync(
    cache: Any,
    account: Account,
    config: Config,
    *,
    progress: Progress | None = None,
    full: bool = False,
) -> SyncStats:
    """Bring the cache up to date with the account's IMAP folders (headers only).

    ``full`` refetches every message of every folder and drops locations the server no
    longer has; otherwise only UIDs above the last one seen are fetched.
    """
    started = time.monotonic()
    s = Settings.from_account(account)
    keep = config.kept_headers()
    for h in keep:
        if not re.fullmatch(r"[!-9;-~]+", h):
            raise ConfigError("leads.forms", f"{h!r} is not a header name")
    stats = SyncStats(account.name)
    stats.extra.update(fetch_commands=0, folders={}, retries=0, connections=0)
    state = _load_state(cache.account_state(account.name))
    run = _Run(s, account, cache, keep, b"", progress, stats, state, full)
    failures = 0
    last_error = ""
    while True:
        done_before = stats.fetched + stats.removed + len(run.state["folders"])
        try:
            stats.extra["connections"] += 1
            client = connect(s, account)
        except ReplytimeError:
            raise  # permanent: bad password, untrusted certificate, config mistake
        except _TRANSIENT as exc:
            last_error = _describe(exc)
        else:
            try:
                _sync_folders(run, client)
                client.logout()
                break
            except _TRANSIENT as exc:
                last_error = _describe(exc)
                _drop(client)
            except imaplib.IMAP4.error as exc:
                _drop(client)
                raise SourceUnreachable(f"IMAP server {s.where}: {_describe(exc)}") from None
            except BaseException:
                _drop(client)
                raise
        # Progress since the last failure means the server is alive: start counting again.
        if stats.fetched + stats.removed + len(run.state["folders"]) > done_before:
            failures = 0
        if failures >= s.retries:
            raise SourceUnreachable(
                f"IMAP server {s.where} unreachable after {s.retries} retries ({last_error}); "
                f"{stats.fetched} messages synced before the failure are kept"
            )
        time.sleep(backoff_delay(failures, base=s.retry_delay, cap=30.0))
        failures += 1
        stats.extra["retries"] += 1
    stats.seconds = time.monotonic() - started
    return stats


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(exc, socket.timeout | TimeoutError):
        text = "timed out"
    return text[:200]


def _load_state(raw: dict[str, Any]) -> dict[str, Any]:
    if raw.get("version") != STATE_VERSION or not isinstance(raw.get("folders"), dict):
        return {"version": STATE_VERSION, "folders": {}}
    return {"version": STATE_VERSION, "folders": dict(raw["folders"])}


def _sync_folders(run: _Run, client: IMAPClient) -> None:
    s = run.settings
    caps = client.capabilities()
    run.gmail = b"X-GM-EXT-1" in caps
    fields = " ".join(h.upper() for h in dict.fromkeys((*WANTED_HEADERS, *run.keep)))
    gm = b" X-GM-THRID X-GM-MSGID X-GM-LABELS" if run.gmail else b""
    run.items = b"(UID INTERNALDATE%s BODY.PEEK[HEADER.FIELDS (%s)])" % (gm, fields.encode())
    folders = s.folders or _default_folders(client, run.gmail)
    if run.fresh_folders is None:
        run.fresh_folders = set(folders) if run.full else set()
    for folder in folders:
        _sync_folder(run, client, folder)


def _default_folders(client: IMAPClient, gmail: bool) -> tuple[str, ...]:
    """Gmail: All Mail holds every message once, labels tell the rest. Elsewhere: INBOX and
    the folder LIST marks \\Sent (whatever its name or language)."""
    if gmail:
        return (client.find_special_folder(b"\\All") or GMAIL_ALL_MAIL,)
    sent = client.find_special_folder(b"\\Sent")
    return ("INBOX", sent) if sent and sent != "INBOX" else ("INBOX",)


def _sync_folder(run: _Run, client: IMAPClient, folder: str) -> None:
    s, stats = run.settings, run.stats
    fresh = folder in (run.fresh_folders or ())
    saved = None if fresh else run.state["folders"].get(folder)
    try:
        status = client.folder_status(folder, [b"UIDVALIDITY", b"UIDNEXT"])
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error:
        raise ConfigError(f"accounts.{s.account}.folders",
                          f"no folder {folder!r} on {s.where}") from None
    uidvalidity = int(status[b"UIDVALIDITY"])
    info = stats.extra["folders"].setdefault(folder, {"new": 0, "removed": 0})
    if saved and saved["uidvalidity"] == uidvalidity and \
            int(status.get(b"UIDNEXT", 0)) <= saved["last_uid"] + 1:
        return  # nothing new: one STATUS, no SELECT
    selected = client.select_folder(folder, readonly=True)
    uidvalidity = int(selected[b"UIDVALIDITY"])
    # Every UID below UIDNEXT at SELECT time is found by the SEARCH that follows (or was
    # expunged); later arrivals get UIDs from UIDNEXT on. So after the last chunk, STATUS
    # alone can answer "nothing new" even when the newest messages were deleted.
    top = int(selected.get(b"UIDNEXT", 1)) - 1
    removed: list[str] = []
    if saved and saved["uidvalidity"] == uidvalidity:
        last = int(saved["last_uid"])
        # "n+1:*" always matches the highest UID, even when it is <= n: filter.
        uids = [u for u in client.search(["UID", f"{last + 1}:*"]) if u > last]
    else:
        # First sync of this folder, a full resync, or a new UIDVALIDITY (the old UIDs
        # mean nothing now): fetch everything and drop locations the server lacks.
        last = 0
        uids = sorted(client.search(["ALL"]))
        current = {f"{folder}/{uidvalidity}/{u}" for u in uids}
        removed = sorted(
            loc for loc in run.cache.known_locations(s.account, folder + "/")
            if loc.rsplit("/", 2)[0] == folder and loc not in current
        )
        info["uidvalidity_changed"] = bool(saved)
    if run.progress is not None:
        run.progress.set_total((run.progress.total or 0) + len(uids))
    chunks = [uids[i:i + s.chunk] for i in range(0, len(uids), s.chunk)]
    if not chunks:
        # Nothing to fetch, but record the folder (and any removals) all the same.
        _commit(run, folder, uidvalidity, max(last, top), [], removed, [])
        return
    pipe = _Pipeline(client, chunks, run.items)
    jobs = ((raw, folder, uidvalidity, run.keep, run.gmail) for _, raw in pipe)
    # One chunk (a typical incremental sync) is parsed here: no workers to start.
    workers = default_workers() if len(chunks) > 1 else 1
    results: Generator[_Parsed, None, None] = (
        ordered_map(_parse_chunk, jobs, workers, nice=WORKER_NICE) if workers > 1
        else (_parse_chunk(*job) for job in jobs)
    )
    items: list[StoredMessage] = []
    skipped: list[tuple[str, str]] = []
    later: _Parsed = ([], [])  # answers that arrived ahead of their chunk
    done = 0  # chunks received whole (parsed, not yet committed beyond ``committed``)
    committed = 0

    def commit() -> None:
        nonlocal removed, committed
        chunk = chunks[done - 1]
        upto = max(chunk[-1], top) if done == len(chunks) else chunk[-1]
        _commit(run, folder, uidvalidity, upto, items, removed, skipped)
        if run.progress is not None:
            run.progress.advance(sum(len(c) for c in chunks[committed:done]), note=folder)
        items.clear()
        skipped.clear()
        removed = []
        committed = done

    try:
        while True:
            try:
                # The pipeline yields chunks in order and results keep that order.
                got, lost = next(results)
            except StopIteration:
                break
            except Exception:
                if done > committed:
                    commit()  # what arrived whole before the failure is kept
                raise
            # Dovecot may run pipelined FETCHes concurrently: answers of the next command
            # can arrive before this one's tagged OK. Chunks are ascending UID runs, so
            # answers beyond this chunk's last UID wait for the chunk they belong to.
            end = chunks[done][-1]
            mine, later_items = _split(later[0] + got, end)
            items += mine
            mine_skipped, later_skipped = _split(later[1] + lost, end)
            skipped += mine_skipped
            later = (later_items, later_skipped)
            done += 1
            # Several chunks per transaction: each commit rewrites the index pages it
            # touches, and message ids come in random order. Writing 100,000 messages
            # takes 1.2 s in transactions of 10,000, 1.5 s of 5,000, 3.0 s of 1,000.
            if done == len(chunks) or done - committed >= COMMIT_CHUNKS:
                commit()
    finally:
        results.close()  # stops the workers at once if writing failed
        stats.extra["fetch_commands"] += pipe.commands


# A chunk's answers with their UIDs: messages as the cache stores them, skipped places.
_Parsed = tuple[list[tuple[int, StoredMessage]], list[tuple[int, tuple[str, str]]]]


def _split(entries: list[tuple[int, Any]], end: int) -> tuple[list[Any], list[tuple[int, Any]]]:
    """The values of entries with UIDs up to ``end``, and the entries beyond it."""
    return [v for u, v in entries if u <= end], [e for e in entries if e[0] > end]


def _parse_chunk(
    raw: bytes, folder: str, uidvalidity: int, keep: tuple[str, ...], gmail: bool
) -> _Parsed:
    """One chunk's raw FETCH answers parsed: messages ready to store and skipped places.
    Runs in a worker process: everything it needs comes in its (picklable) arguments."""
    items: list[tuple[int, StoredMessage]] = []
    skipped: list[tuple[int, tuple[str, str]]] = []
    labels = (folder,)
    prefix = f"{folder}/{uidvalidity}/"
    for d in _responses(raw):
        uid_raw = d.get(b"UID")
        if not isinstance(uid_raw, bytes):
            continue  # an unsolicited FETCH (flag change) without UID
        uid = int(uid_raw)
        loc = prefix + uid_raw.decode()
        block = d.get(b"BODY[")
        date = d.get(b"INTERNALDATE")
        if not isinstance(block, bytes):
            if date is not None:  # else an unsolicited flag update: not an answer to us
                skipped.append((uid, (loc, "the server returned no header")))
            continue
        try:
            ms = parse_internaldate(date) if isinstance(date, bytes) else None
        except (ValueError, KeyError):
            ms = None
        thread = None
        msg_labels: tuple[str, ...] = labels
        if gmail:
            thrid = d.get(b"X-GM-THRID")
            # Hex, as the Gmail API spells thread ids, so both connectors agree.
            thread = format(int(thrid), "x") if isinstance(thrid, bytes) else None
            gl = d.get(b"X-GM-LABELS")
            msg_labels = gmail_labels(gl) if isinstance(gl, list) else ()
        record = parse_header_block(
            block, server_time_ms=ms, provider_thread_id=thread, labels=msg_labels, keep=keep
        )
        if gmail and record.message_id is None:
            msgid = d.get(b"X-GM-MSGID")
            if isinstance(msgid, bytes):
                # Gmail's own message id is a stabler dedup key than a header digest.
                record.fallback_key = "gmail:" + format(int(msgid), "x")
        items.append((uid, stored_message(loc, record)))
    return items, skipped


def _commit(
    run: _Run,
    folder: str,
    uidvalidity: int,
    last_uid: int,
    items: list[StoredMessage],
    removed: list[str],
    skipped: list[tuple[str, str]],
) -> None:
    new_state = {
        "version": STATE_VERSION,
        "folders": {**run.state["folders"],
                    folder: {"uidvalidity": uidvalidity, "last_uid": last_uid}},
    }
    run.cache.write_stored(
        run.settings.account, items, account_type=ACCOUNT_TYPE, state=new_state,
        skipped=skipped, removed=removed,
    )
    # Only after the commit: a retry then resumes exactly where the cache is.
    run.state = new_state
    if run.fresh_folders:
        run.fresh_folders.discard(folder)
    run.stats.fetched += len(items)
    run.stats.skipped += len(skipped)
    run.stats.removed += len(removed)
    info = run.stats.extra["folders"][folder]
    info["new"] += len(items)
    info["removed"] += len(removed)
