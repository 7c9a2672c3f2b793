"""A fake Microsoft identity platform and Graph mail API on loopback HTTPS, for tests and the
benchmark.

The real ``msal`` signs in against it (device code, refresh, client credentials with a
secret or a certificate) and the connector reads mail from it, both through the account's
``ca_file`` (a CA made here with the ``cryptography`` package). It behaves as the services
do, quirks included:

Identity (``/{tenant}/...``): OIDC discovery at ``/{tenant}/v2.0/.well-known/
openid-configuration``, ``/oauth2/v2.0/devicecode`` and ``/oauth2/v2.0/token``; refresh
tokens rotate; ``revoked`` answers ``invalid_grant`` (AADSTS70000); ``expire_tokens()``
makes Graph refuse every access token issued so far (401 InvalidAuthenticationToken).

Graph (``/v1.0``): ``/me`` or ``/users/{mailbox}``; ``mailFolders/{id or well-known
name}``, ``mailFolders?$filter=displayName eq '...'``; ``messages/delta`` rounds with
``@odata.nextLink`` / ``@odata.deltaLink`` and ``Prefer: odata.maxpagesize`` (capped at
``page_cap``); ``@removed`` for messages that left the folder; a message whose read state
changed comes back with only ``id``, ``isRead`` and ``parentFolderId``; Sent Items
messages have no ``internetMessageHeaders`` (their threading headers are MAPI properties
reached with ``$expand=singleValueExtendedProperties``); ``delta_ignores_expand`` drops the
expansion from delta pages as users report for some ``$expand``; ``expire_sync()`` makes
every delta and next link answer 410 SyncStateNotFound; ``$batch`` of at most 20 GETs.
Throttling per mailbox: more than ``max_concurrent`` requests in flight or more than
``limit`` requests (each batch part counts) in ``window`` seconds get 429 with
Retry-After. Faults: a seeded ``fault_rate`` of requests and batch parts answer 429/503
(with Retry-After ``retry_after``) or 500; ``drop_rate`` closes the connection unanswered;
``truncate_rate`` cuts the answer short.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import re
import secrets
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests import loopback

USER = "rep@acme.example"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
DAY = dt.timedelta(days=1)
EST = dt.timezone(dt.timedelta(hours=-5))
WELL_KNOWN = {"inbox": "Inbox", "sentitems": "Sent Items", "archive": "Archive",
              "deleteditems": "Deleted Items", "drafts": "Drafts"}


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 and localhost: (ca, cert, key)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replytime test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def make_client_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA certificate an app registration would hold: (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replytime app")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
            .sign(key, hashes.SHA256()))
    c, k = directory / "app.pem", directory / "app.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()))
    return c, k


# -- mail ----------------------------------------------------------------------------------

@dataclass
class Message:
    id: str
    folder: str  # folder id
    props: dict[str, Any]  # Graph properties (internetMessageId, from, toRecipients, ...)
    headers: list[tuple[str, str]] | None  # None: Graph shows none (Sent Items)
    mapi: dict[str, str] = field(default_factory=dict)  # "String 0x1042" -> value
    is_read: bool = False
    content_seq: int = 0  # last change of what the cache holds (creation, a move)
    read_seq: int = 0  # last read-state change

    def row(self, select: set[str] | None, expand: set[str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.type": "#microsoft.graph.message",
                               "@odata.etag": f'W/"{self.content_seq}.{self.read_seq}"'}
        for k, v in self.props.items():
            if select is None or k in select:
                out[k] = v
        if (select is None or "isRead" in select):
            out["isRead"] = self.is_read
        if (select is None or "internetMessageHeaders" in select) and self.headers:
            out["internetMessageHeaders"] = [{"name": n, "value": v} for n, v in self.headers]
        if (select is None or "parentFolderId" in select):
            out["parentFolderId"] = self.folder
        if expand is not None:
            out["singleValueExtendedProperties"] = [
                {"id": k, "value": v} for k, v in self.mapi.items() if k.lower() in expand]
        out["id"] = self.id
        return out


@dataclass
class Folder:
    id: str
    name: str
    well_known: str | None


class Mailbox:
    def __init__(self, address: str) -> None:
        self.address = address
        self.folders: dict[str, Folder] = {}
        self.messages: dict[str, Message] = {}
        self.removed: list[tuple[str, str, int]] = []  # (id, folder id, seq)
        self.seq = 0
        for wk, name in WELL_KNOWN.items():
            self.add_folder(name, wk)

    def add_folder(self, name: str, well_known: str | None = None) -> Folder:
        fid = "AAMkAD" + base64.urlsafe_b64encode(f"{self.address}/{name}".encode()).decode()
        f = Folder(fid, name, well_known)
        self.folders[fid] = f
        return f

    def folder(self, key: str) -> Folder | None:
        if key in self.folders:
            return self.folders[key]
        return next((f for f in self.folders.values() if f.well_known == key.lower()), None)


def _addr(a: str) -> dict[str, Any]:
    return {"emailAddress": {"name": a.split("@")[0].title(), "address": a}}


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(box: Mailbox, n: int, *, seed: int = 1, start_ms: int = 1_780_000_000_000,
             sent_share: float = 0.3) -> None:
    """``n`` messages: leads from prospects in Inbox (some automated, some from a web form),
    the rep's replies in Sent Items (no internetMessageHeaders there, as in Graph)."""
    rng = random.Random(seed)
    inbox, sent = box.folder("inbox"), box.folder("sentitems")
    assert inbox and sent
    leads: list[tuple[str, str, str]] = []
    for i in range(n):
        t = start_ms + i * 60_000 + rng.randint(0, 30_000)
        if leads and rng.random() < sent_share:
            mid_parent, conv, prospect = rng.choice(leads)
            mid = f"<r{i}.{seed}@acme.example>"
            props = {"internetMessageId": mid, "conversationId": conv, "from": _addr(USER),
                     "sender": _addr(USER), "toRecipients": [_addr(prospect)],
                     "ccRecipients": [], "replyTo": [], "subject": "Re: Your enquiry",
                     "sentDateTime": iso(t - 1000), "receivedDateTime": iso(t),
                     "isDraft": False}
            add(box, sent.id, props, None, {"String 0x1042": mid_parent,
                                            "String 0x1039": mid_parent})
            continue
        prospect = f"p{i % 997}@prospect{i % 7}.example"
        mid = f"<m{i}.{seed}@prospect.example>"
        conv = f"AAQkAD{i:08d}"
        received = dt.datetime.fromtimestamp(t / 1000, dt.UTC)
        date = dt.datetime.fromtimestamp(t / 1000 - 5, EST)
        headers = [("Received", f"from mx by acme; {received:%a, %d %b %Y %H:%M:%S +0000}"),
                   ("Date", f"{date:%a, %d %b %Y %H:%M:%S -0500}"),
                   ("From", f"{prospect}"), ("To", "sales@acme.example"),
                   ("Subject", f"Enquiry {i}"), ("Message-ID", mid)]
        if i % 11 == 3:
            headers.append(("List-Id", "<news.prospect.example>"))
        if i % 13 == 5:
            headers.append(("X-Lead-Email", f"form{i}@buyer.example"))
        cc = [_addr("boss@acme.example")] if i % 5 == 0 else []
        props = {"internetMessageId": mid, "conversationId": conv, "from": _addr(prospect),
                 "sender": _addr(prospect), "toRecipients": [_addr("sales@acme.example")],
                 "ccRecipients": cc, "replyTo": [], "subject": f"Enquiry {i}",
                 "sentDateTime": iso(t - 5000), "receivedDateTime": iso(t), "isDraft": False}
        add(box, inbox.id, props, headers, {})
        leads.append((mid, conv, prospect))


def add(box: Mailbox, folder: str, props: dict[str, Any], headers: list[tuple[str, str]] | None,
        mapi: dict[str, str]) -> Message:
    box.seq += 1
    mid = "AAMkAGI2" + base64.urlsafe_b64encode(f"{box.address}#{box.seq}".encode()).decode()
    m = Message(mid, folder, props, headers, mapi, content_seq=box.seq)
    box.messages[mid] = m
    return m


# -- the server ----------------------------------------------------------------------------

def _resource(scope: str) -> str:
    """The resource a scope is for (its URL without the permission); bare names: Graph."""
    return scope.rsplit("/", 1)[0] if "://" in scope else "https://graph.microsoft.com"


class FakeMicrosoft:
    def __init__(self, cert_dir: Path, *, seed: int = 7, page_cap: int = 1000,
                 limit: int = 10_000, window: float = 600.0, max_concurrent: int = 4,
                 fault_rate: float = 0.0, drop_rate: float = 0.0, truncate_rate: float = 0.0,
                 retry_after: float = 0.02) -> None:
        self.ca, self._cert, self._key = make_ca(cert_dir)
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.boxes: dict[str, Mailbox] = {USER: Mailbox(USER)}
        self.shared_with_user: set[str] = set()  # mailboxes the user was given access to
        self.app_allowed: set[str] | None = None  # application access policy; None = all
        self.page_cap, self.limit, self.window = page_cap, limit, window
        self.max_concurrent = max_concurrent
        self.fault_rate, self.drop_rate, self.truncate_rate = fault_rate, drop_rate, truncate_rate
        self.retry_after = retry_after
        self.fault_statuses: tuple[int, ...] = (429, 503, 500)
        self.latency = 0.0  # seconds each Graph answer takes, as over a real network
        self.delta_ignores_expand = False
        self.revoked = False
        self.approve_device = True
        self.expires_in = 3600
        self.client_secret: str | None = None
        self.client_cert: Path | None = None
        self.access: dict[str, dict[str, Any]] = {}  # live access tokens
        self.refresh: dict[str, str] = {}  # refresh token -> user
        self.issued: list[str] = []  # every secret handed out, for leak checks
        self.device_codes: dict[str, str] = {}
        # Delegated consent: scopes the user agreed to at a device-code sign-in, plus what
        # an admin consented for the whole tenant. A refresh for anything else is refused
        # (AADSTS65001), as the identity platform does.
        self.consented: dict[str, set[str]] = {}
        self.admin_consented: set[str] = set()
        self.rounds: dict[str, dict[str, Any]] = {}  # skiptoken -> round state
        self.deltas: dict[str, tuple[str, str, int]] = {}  # deltatoken -> (box, folder, seq)
        self.in_flight: dict[str, int] = {}
        self.recent: dict[str, deque[float]] = {}
        self.log: list[tuple[str, str, int]] = []  # (kind, path and query, status)
        self.prefer: list[str] = []  # the Prefer header of every delta request
        self.fail_after: int | None = None  # Graph answers 503 after this many requests
        self.graph_requests = 0
        self.peak = 0  # most Graph requests in flight at once
        self.refreshes = self.token_grants = self.imap_logins = 0
        self.throttled = self.faults = self.dropped = self.truncated = 0
        self.batch_parts = 0
        self.retry_after_seen: list[tuple[float, float]] = []  # (429 sent at, next request at)
        self._pending_retry: float | None = None
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    # -- mailbox edits ------------------------------------------------------------------
    @property
    def box(self) -> Mailbox:
        return self.boxes[USER]

    def mailbox(self, address: str) -> Mailbox:
        with self.lock:
            return self.boxes.setdefault(address, Mailbox(address))

    def add_message(self, box: Mailbox, folder_wk: str, subject: str, *,
                    sender: str = "new@prospect.example") -> Message:
        with self.lock:
            f = box.folder(folder_wk)
            assert f is not None
            box_seq = box.seq + 1
            t = 1_790_000_000_000 + box_seq * 1000
            mid = f"<new{box_seq}@prospect.example>"
            props = {"internetMessageId": mid, "conversationId": f"AAQkNEW{box_seq}",
                     "from": _addr(sender), "sender": _addr(sender),
                     "toRecipients": [_addr("sales@acme.example")], "ccRecipients": [],
                     "replyTo": [], "subject": subject, "sentDateTime": iso(t - 1000),
                     "receivedDateTime": iso(t), "isDraft": False}
            return add(box, f.id, props, [("Message-ID", mid), ("From", sender)], {})

    def toggle_read(self, box: Mailbox, mid: str) -> None:
        with self.lock:
            box.seq += 1
            m = box.messages[mid]
            m.is_read = not m.is_read
            m.read_seq = box.seq

    def delete(self, box: Mailbox, mid: str) -> None:
        with self.lock:
            box.seq += 1
            m = box.messages.pop(mid)
            box.removed.append((mid, m.folder, box.seq))

    def move(self, box: Mailbox, mid: str, folder_wk: str) -> Message:
        """Graph gives a moved message a new id (without the ImmutableId preference)."""
        with self.lock:
            m = box.messages[mid]
            f = box.folder(folder_wk)
            assert f is not None
            self.delete(box, mid)
            return add(box, f.id, m.props, m.headers, m.mapi)

    def expire_sync(self) -> None:
        with self.lock:
            self.rounds.clear()
            self.deltas.clear()

    def expire_tokens(self) -> None:
        with self.lock:
            self.access.clear()

    # -- running -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def account_options(self, cache: Path, **extra: Any) -> dict[str, Any]:
        return {"client_id": CLIENT_ID, "tenant": "organizations", "token_cache": str(cache),
                "authority_host": self.url, "graph_endpoint": f"{self.url}/v1.0",
                "ca_file": str(self.ca), "retry_base": 0.005, "retry_cap": 0.05, **extra}

    def start(self) -> FakeMicrosoft:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self._cert, self._key)
        self._server = loopback.listen(ThreadingHTTPServer, Handler, tls=ctx)
        self.port = loopback.port(self._server)
        loopback.serve(self._server)
        return self

    def stop(self) -> None:
        loopback.stop(self._server)

    # -- identity ------------------------------------------------------------------------
    def _secret(self, prefix: str) -> str:
        value = f"{prefix}{secrets.token_urlsafe(24)}"
        self.issued.append(value)
        return value

    def _tokens(self, user: str | None, scope: str, refresh: bool) -> dict[str, Any]:
        at = self._secret("eyJ0eXAiOiJKV1Qi.at-")
        self.access[at] = {"user": user, "scope": scope, "exp": time.time() + self.expires_in}
        out: dict[str, Any] = {"token_type": "Bearer", "scope": scope,
                               "expires_in": self.expires_in, "ext_expires_in": self.expires_in,
                               "access_token": at}
        if user is not None:
            rt = self._secret("rt-secret-")
            self.refresh[rt] = user
            uid = base64.urlsafe_b64encode(json.dumps(
                {"uid": "00000000-0000-0000-0000-0000000000aa", "utid": TENANT_ID}
            ).encode()).decode().rstrip("=")
            claims = {"iss": f"{self.url}/{TENANT_ID}/v2.0", "aud": CLIENT_ID, "tid": TENANT_ID,
                      "sub": "rep", "oid": "00000000-0000-0000-0000-0000000000aa",
                      "preferred_username": user, "name": "Rep", "iat": int(time.time()),
                      "exp": int(time.time()) + 3600}
            body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
            out.update(refresh_token=rt, client_info=uid,
                       id_token=f"eyJhbGciOiJub25lIn0.{body}.")
        return out

    def identity(self, method: str, path: str, form: dict[str, str]) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        tenant = parts[0]
        if path.endswith("/v2.0/.well-known/openid-configuration"):
            base = f"{self.url}/{tenant}"
            return 200, {"issuer": f"{self.url}/{TENANT_ID}/v2.0",
                         "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                         "token_endpoint": f"{base}/oauth2/v2.0/token",
                         "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                         "jwks_uri": f"{base}/discovery/v2.0/keys"}
        if path.endswith("/oauth2/v2.0/devicecode") and method == "POST":
            code = secrets.token_urlsafe(12)
            self.device_codes[code] = form.get("scope", "")
            return 200, {"device_code": code, "user_code": "ABCD-EFGH",
                         "verification_uri": "https://microsoft.com/devicelogin",
                         "expires_in": 900, "interval": 1,
                         "message": "To sign in, use a web browser to open the page "
                         "https://microsoft.com/devicelogin and enter the code ABCD-EFGH."}
        if path.endswith("/oauth2/v2.0/token") and method == "POST":
            return self._token(form)
        if path == "/introspect" and method == "POST":
            # For Dovecot's oauth2 passdb: what Exchange Online checks at an XOAUTH2 login.
            info = self.access.get(form.get("token", ""))
            ok = info is not None and info["exp"] > time.time() and (
                "IMAP.AccessAsUser.All" in info["scope"] or info["user"] is None)
            self.imap_logins += 1
            return 200, {"active": ok, "username": info["user"] if ok and info else None}
        return 404, {"error": "not_found"}

    def _token(self, form: dict[str, str]) -> tuple[int, Any]:
        grant = form.get("grant_type", "")
        scope = " ".join(s for s in form.get("scope", "").split()
                         if s not in ("openid", "profile", "offline_access"))
        if form.get("client_id") != CLIENT_ID:
            return 400, {"error": "unauthorized_client",
                         "error_description": "AADSTS700016: Application not found."}
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            if form.get("device_code") not in self.device_codes:
                return 400, {"error": "expired_token"}
            if not self.approve_device:
                return 400, {"error": "authorization_pending",
                             "error_description": "AADSTS70016: pending"}
            scope = " ".join(s for s in self.device_codes.pop(form["device_code"]).split()
                             if s not in ("openid", "profile", "offline_access"))
            # The consent page takes scopes of several resources; the token does not.
            if len({_resource(s) for s in scope.split()}) > 1:
                return 400, {"error": "invalid_scope", "error_codes": [28000],
                             "error_description": "AADSTS28000: Provided value for the input "
                             "parameter scope is not valid because it contains more than one "
                             "resource."}
            self.consented.setdefault(USER, set()).update(scope.split())
            self.token_grants += 1
            return 200, self._tokens(USER, scope, True)
        if grant == "refresh_token":
            user = self.refresh.get(form.get("refresh_token", ""))
            if self.revoked or user is None:
                return 400, {"error": "invalid_grant", "error_codes": [70000],
                             "error_description": "AADSTS70000: The provided grant has "
                             "expired due to it being revoked."}
            if not set(scope.split()) <= self.consented.get(user, set()) | self.admin_consented:
                return 400, {"error": "invalid_grant", "error_codes": [65001],
                             "suberror": "consent_required",
                             "error_description": "AADSTS65001: The user or administrator "
                             "has not consented to use the application. Send an interactive "
                             "authorization request for this user and resource."}
            self.refreshes += 1
            del self.refresh[form["refresh_token"]]  # rotated
            return 200, self._tokens(user, scope, True)
        if grant == "client_credentials":
            if not self._client_ok(form):
                return 401, {"error": "invalid_client",
                             "error_description": "AADSTS7000215: Invalid client secret."}
            self.token_grants += 1
            return 200, self._tokens(None, scope, False)
        return 400, {"error": "unsupported_grant_type"}

    def smtp_login(self, user: str, token: str) -> bool:
        """Exchange Online's SMTP AUTH check of an XOAUTH2 login: a live token for
        SMTP.Send of that user (or an app-only one)."""
        with self.lock:
            info = self.access.get(token)
            return info is not None and info["exp"] > time.time() and (
                "https://outlook.office.com/SMTP.Send" in info["scope"].split()
                and info["user"] == user or info["user"] is None)

    def _client_ok(self, form: dict[str, str]) -> bool:
        if self.client_secret is not None and form.get("client_secret") == self.client_secret:
            return True
        assertion = form.get("client_assertion")
        if self.client_cert is not None and assertion:
            import jwt
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(self.client_cert.read_bytes())
            try:
                claims = jwt.decode(assertion, cert.public_key(),  # type: ignore[arg-type]
                                    algorithms=["RS256", "PS256"],
                                    options={"verify_aud": False})
            except jwt.PyJWTError:
                return False
            return claims.get("iss") == CLIENT_ID and claims.get("sub") == CLIENT_ID
        return False

    # -- graph ---------------------------------------------------------------------------
    def _admit(self, mailbox: str, now: float) -> float | None:
        """Graph's per-mailbox limits; the Retry-After to send, or None when admitted."""
        q = self.recent.setdefault(mailbox, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) >= self.limit:
            return max(1.0, q[0] + self.window - now)
        q.append(now)
        return None

    def graph(self, token: str | None, method: str, target: str, body: Any, prefer: str,
              part: bool = False) -> tuple[int, Any, dict[str, str]]:
        path, _, query = target.partition("?")
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        info = self.access.get(token or "")
        if info is None or info["exp"] < time.time():
            return 401, {"error": {"code": "InvalidAuthenticationToken",
                                   "message": "Access token has expired or is not yet valid."}
                         }, {}
        if path == "/$batch" and method == "POST" and not part:
            return self._batch(token, body)
        m = re.match(r"^/(me|users/([^/]+))(/.*)$", path)
        if not m:
            return 400, {"error": {"code": "BadRequest", "message": f"Unsupported {path}"}}, {}
        address = USER if m.group(1) == "me" else unquote(m.group(2)).lower()
        if m.group(1) == "me" and info["user"] is None:
            return 400, {"error": {"code": "BadRequest", "message": "/me request is only "
                                   "valid with delegated authentication flow."}}, {}
        if info["user"] is None:
            if self.app_allowed is not None and address not in self.app_allowed:
                return 403, {"error": {"code": "ErrorAccessDenied", "message": "Access to "
                             "OData is disabled: blocked by tenant configured AppOnly "
                             "AccessPolicy settings."}}, {}
        elif address != info["user"] and address not in self.shared_with_user:
            return 403, {"error": {"code": "ErrorAccessDenied",
                                   "message": "Access is denied."}}, {}
        now = time.monotonic()
        with self.lock:
            wait = self._admit(address, now)
            if wait is None and self.fault_rate and self.rng.random() < self.fault_rate:
                self.faults += 1
                status = self.rng.choice(self.fault_statuses)
                if status == 500:
                    return 500, {"error": {"code": "InternalServerError",
                                           "message": "fault"}}, {}
                return status, {"error": {"code": "ApplicationThrottled" if status == 429
                                          else "ServiceUnavailable", "message": "fault"}}, {
                    "Retry-After": f"{self.retry_after:g}"}
            if wait is not None:
                self.throttled += 1
                return 429, {"error": {"code": "ApplicationThrottled",
                                       "message": "Application is over its MailboxConcurrency "
                                       "limit."}}, {"Retry-After": f"{wait:.0f}"}
            box = self.boxes.get(address)
            if box is None:
                return 404, {"error": {"code": "ErrorInvalidUser",
                                       "message": "The requested user is invalid."}}, {}
            return self._mail(box, m.group(3), params, prefer)

    def _mail(self, box: Mailbox, rest: str, params: dict[str, str], prefer: str
              ) -> tuple[int, Any, dict[str, str]]:
        not_found = (404, {"error": {"code": "ErrorItemNotFound",
                                     "message": "The specified object was not found."}}, {})
        select = set(params["$select"].split(",")) if "$select" in params else None
        expand = None
        if "singleValueExtendedProperties" in params.get("$expand", ""):
            expand = {x.lower() for x in re.findall(r"id eq '([^']+)'", params["$expand"])}
        if rest == "/mailFolders":
            flt = re.match(r"displayName eq '(.*)'$", params.get("$filter", ""))
            want = flt.group(1).replace("''", "'") if flt else None
            return 200, {"value": [{"id": f.id, "displayName": f.name}
                                   for f in box.folders.values()
                                   if want is None or f.name == want]}, {}
        fm = re.match(r"^/mailFolders(?:/([^/(]+)|\('([^']+)'\))(/messages(/delta)?)?$", rest)
        if fm:
            folder = box.folder(unquote(fm.group(1) or fm.group(2)))
            if folder is None:
                return not_found
            if not fm.group(3):
                return 200, {"id": folder.id, "displayName": folder.name}, {}
            if fm.group(4):
                return self._delta(box, folder, params, prefer, select, expand)
            ids = sorted(m.id for m in box.messages.values() if m.folder == folder.id)
            top, skip = int(params.get("$top", 10)), int(params.get("$skip", 0))
            page = {"value": [{"id": i} for i in ids[skip:skip + min(top, 1000)]]}
            if skip + top < len(ids):
                page["@odata.nextLink"] = (f"{self.url}/v1.0/{self._box_path(box)}/mailFolders/"
                                           f"{folder.id}/messages?$select=id&$top={top}"
                                           f"&$skip={skip + top}")
            return 200, page, {}
        mm = re.match(r"^/messages/([^/]+)$", rest)
        if mm:
            msg = box.messages.get(unquote(mm.group(1)))
            if msg is None:
                return not_found
            return 200, msg.row(select, expand), {}
        return 400, {"error": {"code": "BadRequest", "message": f"unsupported {rest}"}}, {}

    def _box_path(self, box: Mailbox) -> str:
        return "me" if box.address == USER else f"users/{quote(box.address)}"

    def _delta(self, box: Mailbox, folder: Folder, params: dict[str, str], prefer: str,
               select: set[str] | None, expand: set[str] | None
               ) -> tuple[int, Any, dict[str, str]]:
        gone = (410, {"error": {"code": "SyncStateNotFound", "message": "The sync state "
                                "generation is not found."}}, {})
        if "$skiptoken" in params:
            rnd = self.rounds.get(params["$skiptoken"])
            if rnd is None:
                return gone
        else:
            base = 0
            if "$deltatoken" in params:
                known = self.deltas.get(params["$deltatoken"])
                if known is None:
                    return gone
                base = known[2]
            if self.delta_ignores_expand:
                expand = None
            rows: list[dict[str, Any]] = []
            for msg in sorted(box.messages.values(), key=lambda x: x.content_seq):
                if msg.folder != folder.id:
                    continue
                if msg.content_seq > base:
                    rows.append(msg.row(select, expand))
                elif msg.read_seq > base:
                    rows.append({"@odata.type": "#microsoft.graph.message",
                                 "@odata.etag": f'W/"{msg.content_seq}.{msg.read_seq}"',
                                 "id": msg.id, "isRead": msg.is_read,
                                 "parentFolderId": msg.folder})
            rows.extend({"@odata.type": "#microsoft.graph.message", "id": mid,
                         "@removed": {"reason": "deleted"}}
                        for mid, fid, seq in box.removed if fid == folder.id and seq > base)
            rnd = {"box": box.address, "folder": folder.id, "rows": rows, "offset": 0,
                   "seq": box.seq}
        m = re.search(r"odata\.maxpagesize=(\d+)", prefer or "")
        size = min(int(m.group(1)) if m else 10, self.page_cap)
        start = rnd["offset"]
        page: dict[str, Any] = {"@odata.context": f"{self.url}/v1.0/$metadata#Collection(message)",
                                "value": rnd["rows"][start:start + size]}
        link = f"{self.url}/v1.0/{self._box_path(box)}/mailFolders('{folder.id}')/messages/delta"
        if start + size < len(rnd["rows"]):
            token = secrets.token_urlsafe(16)
            self.rounds[token] = {**rnd, "offset": start + size}
            page["@odata.nextLink"] = f"{link}?$skiptoken={token}"
        else:
            token = secrets.token_urlsafe(16)
            self.deltas[token] = (rnd["box"], rnd["folder"], rnd["seq"])
            page["@odata.deltaLink"] = f"{link}?$deltatoken={token}"
        return 200, page, {}

    def _batch(self, token: str | None, body: Any) -> tuple[int, Any, dict[str, str]]:
        reqs = (body or {}).get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not reqs or len(reqs) > 20:
            return 400, {"error": {"code": "BadRequest", "message": "A batch must hold 1 to "
                                   "20 requests."}}, {}
        out = []
        for r in reqs:
            self.batch_parts += 1
            status, rbody, headers = self.graph(token, r.get("method", "GET"), r.get("url", ""),
                                                None, "", part=True)
            out.append({"id": r.get("id"), "status": status, "headers": headers, "body": rbody})
        return 200, {"responses": out}, {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeMicrosoft

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        fake = self.server_fake
        data = json.dumps(body).encode()
        with fake.lock:
            drop = fake.drop_rate and fake.rng.random() < fake.drop_rate
            cut = not drop and fake.truncate_rate and fake.rng.random() < fake.truncate_rate
            if drop:
                fake.dropped += 1
            if cut:
                fake.truncated += 1
        if drop:
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if cut:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        fake = self.server_fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        if not path.startswith("/v1.0/"):
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            with fake.lock:
                status, body = fake.identity(method, path, form)
                fake.log.append(("identity", path, status))
            self._reply(status, body)
            return
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        target = self.path[len("/v1.0"):]
        body = json.loads(raw) if raw else None
        first = target
        if isinstance(body, dict) and body.get("requests"):
            first = str(body["requests"][0].get("url", ""))
        who = re.match(r"^/users/([^/?]+)", first)
        address = unquote(who.group(1)).lower() if who else USER
        with fake.lock:
            fake.in_flight[address] = fake.in_flight.get(address, 0) + 1
            fake.peak = max(fake.peak, fake.in_flight[address])
            busy = fake.in_flight[address] > fake.max_concurrent
            fake.graph_requests += 1
            outage = fake.fail_after is not None and fake.graph_requests > fake.fail_after
            if fake._pending_retry is not None:
                fake.retry_after_seen.append((fake._pending_retry, time.monotonic()))
                fake._pending_retry = None
        try:
            if fake.latency:
                time.sleep(fake.latency)
            if outage:
                status, rbody, headers = 503, {"error": {"code": "ServiceUnavailable",
                                                         "message": "outage"}}, {}
            elif busy:
                status, rbody, headers = 429, {"error": {
                    "code": "ApplicationThrottled",
                    "message": "Application is over its MailboxConcurrency limit."}}, {
                    "Retry-After": "1"}
                with fake.lock:
                    fake.throttled += 1
            else:
                status, rbody, headers = fake.graph(token, method, target, body,
                                                    self.headers.get("Prefer", ""))
            with fake.lock:
                fake.log.append(("graph", unquote(target), status))
                if "/delta" in target:
                    fake.prefer.append(self.headers.get("Prefer", ""))
                if status == 429 and "Retry-After" in headers:
                    fake._pending_retry = time.monotonic() + float(headers["Retry-After"])
        finally:
            with fake.lock:
                fake.in_flight[address] -= 1  # before the answer leaves: the client may
                # send its next request the moment it has read this one
        self._reply(status, rbody, headers)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")
