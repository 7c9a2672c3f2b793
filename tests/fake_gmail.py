"""A fake Gmail REST server on loopback, for tests and the benchmark.

The real ``google-api-python-client`` talks to it (client option ``api_endpoint``), so the
tests exercise real request building, batch encoding and response parsing. It implements
the parts of the Gmail API replytime uses, with Gmail's per-user quota:

- GET  /gmail/v1/users/{u}/profile                       1 unit
- GET  /gmail/v1/users/{u}/threads        (q, labelIds)  10 units, paged
- GET  /gmail/v1/users/{u}/threads/{id}   (metadata)     10 units
- GET  /gmail/v1/users/{u}/messages       (q, labelIds)   5 units, paged
- GET  /gmail/v1/users/{u}/messages/{id}  (metadata)      5 units
- GET  /gmail/v1/users/{u}/history                        2 units, paged; 404 when expired
- POST /batch/gmail/v1   multipart/mixed, each part costs its own units
- POST /token            OAuth refresh (``revoked`` answers invalid_grant)

Quota: the units accepted in the last ``quota_window`` seconds may not exceed
``quota_rate * quota_window`` (a moving average); beyond it the request or batch part gets
429 rateLimitExceeded and is not charged. Faults: a seeded fraction of requests and batch
parts answer 429/500/503; ``fail_after`` makes every request fail once that many have been
answered (a permanent outage).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests import loopback

COSTS = {
    "profile": 1,
    "threads.list": 10,
    "threads.get": 10,
    "messages.list": 5,
    "messages.get": 5,
    "history.list": 2,
}
_ROUTE = re.compile(r"^/gmail/v1/users/([^/]+)/(profile|threads|messages|history)(?:/([^/]+))?$")
SYSTEM_LABELS = ("INBOX", "SENT", "UNREAD", "IMPORTANT", "CATEGORY_PERSONAL")


@dataclass
class FakeMessage:
    id: str
    thread_id: str
    headers: list[tuple[str, str]]
    internal_date: int  # epoch ms
    labels: list[str]
    history_id: int = 0
    size: int = 2000

    def resource(self, wanted: set[str] | None) -> dict[str, Any]:
        hdrs = [
            {"name": n, "value": v}
            for n, v in self.headers
            if wanted is None or n.lower() in wanted
        ]
        return {
            "id": self.id,
            "threadId": self.thread_id,
            "labelIds": list(self.labels),
            "snippet": "",
            "historyId": str(self.history_id),
            "internalDate": str(self.internal_date),
            "sizeEstimate": self.size,
            "payload": {"partId": "", "mimeType": "text/plain", "headers": hdrs},
        }


@dataclass
class LogEntry:
    api: str  # profile, threads.list, threads.get, messages.list, messages.get, history.list,
    # batch, token, unknown
    method: str
    path: str
    params: dict[str, list[str]]
    status: int
    part: bool = False  # a part of a batch request
    cost: int = 0


def gmail_id(n: int) -> str:
    return f"{0x18F0000000000000 + n:016x}"


def generate_mailbox(
    n_messages: int, *, seed: int = 1, start_ms: int = 1_790_000_000_000
) -> list[FakeMessage]:
    """Lead threads: an external prospect writes to sales@, reps answer with In-Reply-To /
    References; some threads carry a user label, some messages are automated or carry a
    form header. Thread sizes 1..8, mean about 3 (one message in ~20% of threads)."""
    rng = random.Random(seed)
    sizes, weights = (1, 2, 3, 4, 5, 6, 8), (20, 25, 20, 15, 10, 6, 4)
    out: list[FakeMessage] = []
    t = start_ms
    th = 0
    while len(out) < n_messages:
        size = min(rng.choices(sizes, weights)[0], n_messages - len(out))
        th += 1
        customer = f"buyer{th}@client{th % 97}.example"
        rep = f"rep{th % 7}@acme.example"
        subject = f"Quote request {th}"
        thread_id = gmail_id(len(out))
        refs: list[str] = []
        t += rng.randint(1, 3_600_000)
        mt = t
        for i in range(size):
            n = len(out)
            mid = f"m{n}.{seed}@{'client.example' if i % 2 == 0 else 'acme.example'}"
            inbound = i % 2 == 0
            headers = [
                ("Received", f"from mx.example by mx.google.com; {_rfc2822(mt)}"),
                ("From", f"Buyer {th} <{customer}>" if inbound else f"Rep <{rep}>"),
                ("To", "sales@acme.example" if inbound else customer),
                ("Subject", subject if i == 0 else "Re: " + subject),
                ("Date", _rfc2822(mt)),
                ("Message-ID", f"<{mid}>"),
                ("X-Mailer", "fake"),  # not requested: must be filtered out by the server
            ]
            if i == 0 and th % 5 == 0:
                headers.append(("Cc", f"boss{th % 3}@client{th % 97}.example"))
            if refs:
                headers.append(("In-Reply-To", f"<{refs[-1]}>"))
                headers.append(("References", " ".join(f"<{r}>" for r in refs)))
            if th % 11 == 0 and inbound:
                headers.append(("List-Id", "<news.client.example>"))
            if th % 13 == 0 and i == 0:
                headers.append(("X-Lead-Email", customer))
            labels = ["INBOX", "UNREAD"] if inbound else ["SENT"]
            if th % 4 == 0:
                labels.append("Label_7")
            out.append(FakeMessage(gmail_id(n), thread_id, headers, mt, labels))
            refs.append(mid)
            mt += rng.randint(60_000, 86_400_000)
    return out


def _rfc2822(ms: int) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(ms // 1000))


class FakeGmail:
    """The mailbox, its history, tokens, quota and faults. Thread-safe; start() serves it."""

    def __init__(
        self,
        messages: list[FakeMessage] | None = None,
        *,
        quota_rate: float = 250.0,
        quota_window: float = 1.0,
        fault_rate: float = 0.0,
        fault_codes: tuple[int, ...] = (429, 500, 503),
        seed: int = 0,
        email: str = "sales@acme.example",
        page_max: int = 500,
        delay: float = 0.0,
        log_requests: bool = True,
    ) -> None:
        self.lock = threading.RLock()
        self.messages: dict[str, FakeMessage] = {}
        self.history: list[dict[str, Any]] = []
        self.history_id = 1000
        self.min_history_id = 0  # history older than this answers 404
        self.quota_rate = quota_rate
        self.quota_window = quota_window
        self.fault_rate = fault_rate
        self.fault_codes = fault_codes
        self.rng = random.Random(seed)
        self.email = email
        self.page_max = page_max
        self.delay = delay
        self.fail_after: int | None = None
        self.drop_rate = 0.0  # fraction of HTTP requests whose connection is just closed
        self.dropped = 0
        self.truncate_rate = 0.0  # fraction of API answers cut in half, then closed
        self.truncated = 0
        self.slow_rate = 0.0  # fraction of API answers sent after a pause
        self.slowed = 0
        self.answered = 0
        self.log_requests = log_requests
        self.log: list[LogEntry] = []
        self.units_total = 0
        self.rejected_429 = 0
        self.access_tokens: set[str] = set()
        self.issued: list[str] = []  # every access token ever handed out
        self.refresh_tokens: set[str] = {"refresh-secret-1"}
        self.revoked = False
        self.granted_scopes = ["https://www.googleapis.com/auth/gmail.readonly"]
        self.refresh_count = 0
        self._spent: deque[tuple[float, int]] = deque()
        self._in_window = 0
        self._order: list[str] | None = None
        self._lists: dict[tuple[Any, ...], list[dict[str, str]]] = {}  # cleared on changes
        self.threads: dict[str, list[FakeMessage]] = {}
        self._next_id = 10_000_000
        for m in messages or ():
            self.history_id += 1
            m.history_id = self.history_id
            self.messages[m.id] = m
            self.threads.setdefault(m.thread_id, []).append(m)
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # -- mailbox changes (each one makes a history record) -------------------------------
    def _record(self, kind: str, msg: FakeMessage, labels: list[str] | None = None) -> None:
        self.history_id += 1
        msg.history_id = self.history_id
        ref = {"id": msg.id, "threadId": msg.thread_id, "labelIds": list(msg.labels)}
        rec: dict[str, Any] = {"id": str(self.history_id), "messages": [ref]}
        entry: dict[str, Any] = {"message": ref}
        if labels is not None:
            entry["labelIds"] = labels
        rec[kind] = [entry]
        self.history.append(rec)
        self._order = None
        self._lists.clear()

    def add_message(
        self,
        headers: list[tuple[str, str]],
        *,
        thread_id: str | None = None,
        labels: tuple[str, ...] = ("INBOX",),
        internal_date: int | None = None,
    ) -> str:
        with self.lock:
            self._next_id += 1
            mid = gmail_id(self._next_id)
            msg = FakeMessage(
                mid,
                thread_id or mid,
                list(headers),
                internal_date or 1_800_000_000_000 + self._next_id,
                list(labels),
            )
            self.messages[mid] = msg
            self.threads.setdefault(msg.thread_id, []).append(msg)
            self._record("messagesAdded", msg)
            return mid

    def relabel(self, mid: str, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()) -> None:
        with self.lock:
            msg = self.messages[mid]
            if add:
                msg.labels += [lb for lb in add if lb not in msg.labels]
                self._record("labelsAdded", msg, list(add))
            if remove:
                msg.labels = [lb for lb in msg.labels if lb not in remove]
                self._record("labelsRemoved", msg, list(remove))

    def delete(self, mid: str) -> None:
        with self.lock:
            msg = self.messages.pop(mid)
            rest = [x for x in self.threads[msg.thread_id] if x.id != mid]
            if rest:
                self.threads[msg.thread_id] = rest
            else:
                del self.threads[msg.thread_id]
            self._record("messagesDeleted", msg)

    def expire_history(self) -> None:
        """Forget all history so far: older start ids answer 404 from now on."""
        with self.lock:
            self.min_history_id = self.history_id
            self.history.clear()

    # -- tokens ---------------------------------------------------------------------------
    def issue_token(self) -> str:
        with self.lock:
            tok = f"ya29.fake-access-{len(self.access_tokens) + 1}-{self.rng.randrange(10**9)}"
            self.access_tokens.add(tok)
            self.issued.append(tok)
            return tok

    def expire_tokens(self) -> None:
        with self.lock:
            self.access_tokens.clear()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        fake = self

        class Handler(_Handler):
            gmail = fake

        self.server = loopback.listen(ThreadingHTTPServer, Handler, host=host, port=port)
        self.thread = loopback.serve(self.server)
        return self.url

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        loopback.stop(self.server)

    # -- queries for tests -----------------------------------------------------------------
    def calls(self, api: str, *, status: int | None = None) -> list[LogEntry]:
        with self.lock:
            return [e for e in self.log if e.api == api and (status is None or e.status == status)]

    def units_per_message(self) -> float:
        return self.units_total / max(1, len(self.messages))

    # -- request handling -----------------------------------------------------------------
    def _charge(self, cost: int) -> bool:
        now = time.monotonic()
        with self.lock:
            while self._spent and self._spent[0][0] <= now - self.quota_window:
                self._in_window -= self._spent.popleft()[1]
            if self._in_window + cost > self.quota_rate * self.quota_window:
                self.rejected_429 += 1
                return False
            self._spent.append((now, cost))
            self._in_window += cost
            self.units_total += cost
            return True

    def _fault(self, part: bool = False) -> int | None:
        with self.lock:
            if not part:  # fail_after counts HTTP requests (a batch is one)
                self.answered += 1
            if self.fail_after is not None and self.answered > self.fail_after:
                return 503
            if self.fault_rate and self.rng.random() < self.fault_rate:
                return self.rng.choice(self.fault_codes)
        return None

    def handle(
        self, method: str, target: str, headers: dict[str, str], *, part: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """Answer one API request (top level or batch part): (status, JSON body)."""
        url = urlsplit(target)
        params = parse_qs(url.query)
        m = _ROUTE.match(url.path)
        api = "unknown"
        if m:
            what, item = m.group(2), m.group(3)
            api = {"profile": "profile", "history": "history.list"}.get(what) or (
                f"{what}.get" if item else f"{what}.list"
            )
        status, body = self._answer(api, method, m, params, headers, part)
        if self.log_requests:
            with self.lock:
                self.log.append(
                    LogEntry(api, method, url.path, params, status, part,
                             COSTS.get(api, 0) if status < 400 or status == 404 else 0)
                )
        return status, body

    def _answer(
        self,
        api: str,
        method: str,
        m: re.Match[str] | None,
        params: dict[str, list[str]],
        headers: dict[str, str],
        part: bool,
    ) -> tuple[int, dict[str, Any]]:
        if m is None or method != "GET":
            return _error(404, "notFound", "Not Found")
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.access_tokens:
            return _error(401, "authError", "Invalid Credentials")
        code = self._fault(part)
        if code is not None:
            reason = "rateLimitExceeded" if code == 429 else "backendError"
            return _error(code, reason, "injected fault")
        if not self._charge(COSTS[api]):
            return _error(429, "rateLimitExceeded", "User-rate limit exceeded")
        item = m.group(3)
        with self.lock:
            if api == "profile":
                return 200, {
                    "emailAddress": self.email,
                    "messagesTotal": len(self.messages),
                    "threadsTotal": len({x.thread_id for x in self.messages.values()}),
                    "historyId": str(self.history_id),
                }
            if api in ("threads.list", "messages.list"):
                return 200, self._list(api, params)
            if api == "threads.get":
                msgs = sorted(self.threads.get(item or "", []),
                              key=lambda x: (x.internal_date, x.id))
                if not msgs:
                    return _error(404, "notFound", "Requested entity was not found.")
                wanted = _wanted(params)
                return 200, {
                    "id": item,
                    "historyId": str(max(x.history_id for x in msgs)),
                    "messages": [x.resource(wanted) for x in msgs],
                }
            if api == "messages.get":
                msg = self.messages.get(item or "")
                if msg is None:
                    return _error(404, "notFound", "Requested entity was not found.")
                return 200, msg.resource(_wanted(params))
            return self._history(params)

    def _thread_order(self) -> list[str]:
        """Thread ids, newest activity first (as Gmail lists them)."""
        if self._order is None:
            newest = {t: max((x.internal_date, x.id) for x in ms)
                      for t, ms in self.threads.items()}
            self._order = sorted(newest, key=lambda t: newest[t], reverse=True)
        return self._order

    def _list(self, api: str, params: dict[str, list[str]]) -> dict[str, Any]:
        size = min(int(params.get("maxResults", ["100"])[0]), self.page_max)
        offset = int(params.get("pageToken", ["0"])[0])
        q, label_ids = params.get("q", [""])[0], params.get("labelIds", [])
        key = "threads" if api == "threads.list" else "messages"
        cache_key = (api, q, tuple(label_ids))
        items = self._lists.get(cache_key)
        if items is None:  # pages of one listing share the work
            match = _matcher(q, label_ids)
            if api == "threads.list":
                items = [
                    {"id": t, "snippet": "",
                     "historyId": str(max(x.history_id for x in self.threads[t]))}
                    for t in self._thread_order()
                    if any(match(x) for x in self.threads[t])
                ]
            else:
                msgs = sorted(self.messages.values(), key=lambda x: (x.internal_date, x.id),
                              reverse=True)
                items = [{"id": x.id, "threadId": x.thread_id} for x in msgs if match(x)]
            self._lists[cache_key] = items
        page = items[offset : offset + size]
        out: dict[str, Any] = {key: page, "resultSizeEstimate": len(items)}
        if offset + size < len(items):
            out["nextPageToken"] = str(offset + size)
        if not page:
            del out[key]  # Gmail omits empty lists
        return out

    def _history(self, params: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        start = int(params.get("startHistoryId", ["0"])[0])
        if start < self.min_history_id:
            return _error(404, "notFound", "Requested entity was not found.")
        types = {
            {"messageAdded": "messagesAdded", "messageDeleted": "messagesDeleted",
             "labelAdded": "labelsAdded", "labelRemoved": "labelsRemoved"}[t]
            for t in params.get("historyTypes", [])
        } or {"messagesAdded", "messagesDeleted", "labelsAdded", "labelsRemoved"}
        size = min(int(params.get("maxResults", ["100"])[0]), self.page_max)
        offset = int(params.get("pageToken", ["0"])[0])
        records = [
            r for r in self.history
            if int(r["id"]) > start and any(k in r for k in types)
        ]
        page = records[offset : offset + size]
        out: dict[str, Any] = {"historyId": str(self.history_id)}
        if page:
            out["history"] = page
        if offset + size < len(records):
            out["nextPageToken"] = str(offset + size)
        return 200, out

    def token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.refresh_count += 1
        grant = form.get("grant_type", [""])[0]
        if grant == "authorization_code":  # the end of the consent flow
            if form.get("code", [""])[0] != "good-code":
                return 400, {"error": "invalid_grant", "error_description": "Bad code"}
            return 200, {"access_token": self.issue_token(), "expires_in": 3599,
                         "token_type": "Bearer", "refresh_token": "refresh-secret-1",
                         "scope": form.get("scope", [""])[0] or " ".join(self.granted_scopes)}
        if grant != "refresh_token":
            return 400, {"error": "unsupported_grant_type"}
        rt = form.get("refresh_token", [""])[0]
        if self.revoked or rt not in self.refresh_tokens:
            return 400, {"error": "invalid_grant", "error_description": "Token has been expired "
                         "or revoked."}
        return 200, {
            "access_token": self.issue_token(),
            "expires_in": 3599,
            "token_type": "Bearer",
            "scope": "https://www.googleapis.com/auth/gmail.readonly",
        }


def _wanted(params: dict[str, list[str]]) -> set[str] | None:
    names = params.get("metadataHeaders")
    fmt = params.get("format", ["full"])[0]
    if fmt == "metadata" and names:
        return {n.lower() for n in names}
    return None


def _matcher(q: str, label_ids: list[str]) -> Any:
    """A small subset of Gmail search: label:X / in:X (negatable with -), other words
    must occur in the subject; labelIds must all be on the message."""
    tests = []
    for word in q.split():
        neg = word.startswith("-")
        word = word.lstrip("-")
        if ":" in word and word.split(":", 1)[0] in ("label", "in"):
            want = word.split(":", 1)[1].upper()
            tests.append((neg, lambda x, w=want: w in {lb.upper() for lb in x.labels}))
        else:
            tests.append((neg, lambda x, w=word.lower(): any(
                n == "Subject" and w in v.lower() for n, v in x.headers)))

    def match(x: FakeMessage) -> bool:
        if any(lb not in x.labels for lb in label_ids):
            return False
        return all(t(x) != neg for neg, t in tests)

    return match


def _error(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    status = {401: "UNAUTHENTICATED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
              500: "INTERNAL", 503: "UNAVAILABLE"}.get(code, "UNKNOWN")
    return code, {"error": {"code": code, "message": message, "status": status,
                            "errors": [{"message": message, "domain": "global",
                                        "reason": reason}]}}


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class _Handler(BaseHTTPRequestHandler):
    gmail: FakeGmail
    protocol_version = "HTTP/1.1"  # keep-alive, as the real client expects

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json; charset=UTF-8"):
        g = self.gmail
        truncate = slow = False
        if not self.path.startswith("/token"):  # faults on the API, not on OAuth
            with g.lock:
                truncate = bool(g.truncate_rate) and g.rng.random() < g.truncate_rate
                slow = bool(g.slow_rate) and g.rng.random() < g.slow_rate
                g.truncated += truncate
                g.slowed += slow
        if slow:
            time.sleep(0.05)
        self.send_response(status, _REASONS.get(status))
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if truncate:  # the announced length never arrives: the client sees a short read
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def _drop(self) -> bool:
        """Close the connection without an answer (a dropped connection), sometimes."""
        g = self.gmail
        with g.lock:
            drop = bool(g.drop_rate) and g.rng.random() < g.drop_rate
            g.dropped += drop
        if drop:
            self.close_connection = True
        return drop

    def do_GET(self) -> None:  # noqa: N802
        g = self.gmail
        if self._drop():
            return
        if g.delay:
            time.sleep(g.delay)
        status, body = g.handle("GET", self.path, self._headers())
        self._send(status, json.dumps(body).encode())

    def do_POST(self) -> None:  # noqa: N802
        g = self.gmail
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        path = urlsplit(self.path).path
        if path == "/token":
            status, body = g.token(parse_qs(data.decode()))
            if g.log_requests:
                with g.lock:
                    g.log.append(LogEntry("token", "POST", path, {}, status))
            self._send(status, json.dumps(body).encode())
            return
        if path != "/batch/gmail/v1":
            self._send(404, json.dumps(_error(404, "notFound", "Not Found")[1]).encode())
            return
        if self._drop():
            return
        if g.delay:
            time.sleep(g.delay)
        code = g._fault()  # the whole batch request can fail too
        if code is not None:
            if g.log_requests:
                with g.lock:
                    g.log.append(LogEntry("batch", "POST", path, {}, code))
            self._send(code, json.dumps(_error(code, "backendError", "injected fault")[1])
                       .encode())
            return
        ctype = self.headers.get("Content-Type", "")
        m = re.search(r'boundary="?([^";]+)"?', ctype)
        if not m:
            self._send(400, b'{"error": {"code": 400, "message": "no boundary"}}')
            return
        parts = _split_multipart(data.decode("utf-8"), m.group(1))
        if len(parts) > 100:  # Gmail's own limit
            self._send(400, b'{"error": {"code": 400, "message": "too many parts"}}')
            return
        out_boundary = "batch_fake_" + str(g.rng.randrange(10**12))
        chunks = []
        for part in parts:
            mime_head, _, http_text = part.partition("\n\n")
            cid = ""
            for line in mime_head.splitlines():
                if line.lower().startswith("content-id:"):
                    cid = line.split(":", 1)[1].strip()
            req_line, _, rest = http_text.partition("\n")
            head_text = rest.split("\n\n", 1)[0]
            hdrs = {}
            for line in head_text.splitlines():
                if ":" in line:
                    k, v = line.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
            method, target = req_line.split()[:2]
            status, body = g.handle(method, target, hdrs, part=True)
            payload = json.dumps(body)
            chunks.append(
                f"--{out_boundary}\r\nContent-Type: application/http\r\n"
                f"Content-ID: <response-{cid[1:-1]}>\r\n\r\n"
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: application/json; charset=UTF-8\r\n"
                f"Content-Length: {len(payload.encode())}\r\n\r\n{payload}\r\n"
            )
        if g.log_requests:
            with g.lock:
                g.log.append(LogEntry("batch", "POST", path, {}, 200))
        body_bytes = ("".join(chunks) + f"--{out_boundary}--\r\n").encode()
        self._send(200, body_bytes, f"multipart/mixed; boundary={out_boundary}")


def _split_multipart(text: str, boundary: str) -> list[str]:
    text = text.replace("\r\n", "\n")
    pieces = text.split("--" + boundary)
    return [p.strip("\n") for p in pieces[1:] if not p.startswith("--")]
