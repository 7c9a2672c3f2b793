"""Microsoft 365 / Outlook.com connector: headers of the configured folders through Microsoft
Graph delta queries, incremental and resumable (README.md, "Microsoft 365").

Per folder, one delta round is a chain of ``GET {mailbox}/mailFolders/{id}/messages/delta``
pages (``@odata.nextLink``) ending in an ``@odata.deltaLink``, kept for the next round.
Each page's messages are committed with the link to the next page, so a sync killed at any
point resumes at the page after the last commit and ends as an uninterrupted one would. A
folder with nothing new costs one request.

What a page row can be (docs/configuration.md, "Microsoft 365"):

- a full row: ``$select`` asks only for what the cache needs, with
  ``internetMessageHeaders`` (In-Reply-To, References, the automated markers, the Date with
  its zone) and, expanded, the In-Reply-To and References MAPI properties: Graph returns no
  ``internetMessageHeaders`` for messages in Sent Items. A full row that has neither (the
  expansion was ignored) is fetched again, 20 to a ``$batch`` request;
- ``@removed``: the message left the folder; its location goes;
- a changed row: a message whose read state, flag or folder changed comes back with only
  ``id``, ``isRead`` and ``parentFolderId``; it never blanks what the cache holds, and is
  fetched whole only when the cache does not have it.

An expired delta or next link (410, ``SyncStateNotFound``) restarts that folder's round;
at its end the folder's message ids are listed (``$select=id``, 1,000 a page) and the
cached locations Graph no longer has are removed.

Throttling as Graph does it per app and mailbox: at most 4 requests in flight, 10,000 per
10 minutes (each part of a ``$batch`` counts), 429 and 503 answered by waiting out
``Retry-After``; other failures, dropped connections and cut-short answers are retried with
exponential backoff and full jitter (``retry.py``). A sync that cannot finish raises
``SourceUnreachable`` (exit 4) with every committed page kept.

Sync state (``accounts.state``): ``{"folders": {NAME: {"id", "label", "delta", "next",
"restart"}}}``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import requests

from replytime.config import Account, Config
from replytime.errors import AuthError, ConfigError, SourceUnreachable
from replytime.model import MessageRecord
from replytime.progress import Progress
from replytime.sources import SyncStats
from replytime.sources.headers import record_from_fields
from replytime.sources.msauth import MsSettings, TokenSource, settings
from replytime.sources.retry import MovingWindowLimiter, backoff_delay, count_failures

log = logging.getLogger(__name__)

SELECT = ("internetMessageId,conversationId,from,sender,toRecipients,ccRecipients,replyTo,"
          "subject,sentDateTime,receivedDateTime,isDraft,internetMessageHeaders")
# PR_IN_REPLY_TO_ID and PR_INTERNET_REFERENCES: threading headers of Sent Items messages.
IN_REPLY_TO, REFERENCES = "String 0x1042", "String 0x1039"
EXPAND = (f"singleValueExtendedProperties($filter=id eq '{IN_REPLY_TO}' "
          f"or id eq '{REFERENCES}')")
DEFAULT_FOLDERS = ("inbox", "sentitems")
WELL_KNOWN = {"inbox", "sentitems", "drafts", "deleteditems", "archive", "junkemail",
              "outbox", "clutter", "conversationhistory", "scheduled"}
PAGE_SIZE = 1000  # Prefer: odata.maxpagesize; Graph may send fewer and pages on
MAX_BATCH = 20  # Graph's JSON batching limit
MAX_IN_FLIGHT = 4  # Outlook: 4 concurrent requests per app and mailbox
REQUEST_LIMIT, REQUEST_WINDOW = 10_000, 600.0  # Outlook: 10,000 requests per 10 minutes
_RETRY = {429, 500, 502, 503, 504}


class _Expired(Exception):
    """HTTP 410: the delta or next link is no longer valid."""


class Client:
    """Graph requests for one mailbox: pacing, concurrency, token refresh and retries."""

    def __init__(self, s: MsSettings, options: dict[str, Any]) -> None:
        self.s = s
        self.base = s.graph_endpoint
        key = f"accounts.{s.account}"
        self.max_attempts = int(_number(options, "max_attempts", 8, key))
        self.retry_base = float(_number(options, "retry_base", 0.5, key))
        self.retry_cap = float(_number(options, "retry_cap", 32.0, key))
        self.timeout = float(_number(options, "timeout", 60.0, key))
        limit = float(_number(options, "request_limit", REQUEST_LIMIT, key))
        window = float(_number(options, "request_window", REQUEST_WINDOW, key))
        self.limiter = MovingWindowLimiter(limit / window, window=window)
        self.in_flight = threading.Semaphore(int(_number(options, "max_in_flight",
                                                         MAX_IN_FLIGHT, key)))
        self.page_size = int(_number(options, "page_size", PAGE_SIZE, key))
        self.tokens = TokenSource(s, s.graph_scopes())
        self.http = s.session()
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.requests = self.retries = self.throttled = 0

    # -- tokens ------------------------------------------------------------------------
    def _bearer(self, refused: str | None) -> str:
        with self._token_lock:
            if self._token is None or self._token == refused:
                self._token = self.tokens.token(force=refused is not None)
            return self._token

    # -- one HTTP exchange --------------------------------------------------------------
    def _send(self, method: str, url: str, cost: int, body: Any = None,
              prefer: str | None = None) -> tuple[int, Any, float | None]:
        """(status, parsed JSON or None, Retry-After seconds). Transport failures and
        answers cut short raise ``ConnectionError``."""
        refused: str | None = None
        for _ in range(2):  # a refused token is refreshed once
            token = self._bearer(refused)
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if prefer:
                headers["Prefer"] = prefer
            entry = self.limiter.acquire_slot(cost)
            with self.in_flight:
                with self._count_lock:
                    self.requests += 1
                try:
                    resp = self.http.request(method, url, headers=headers, json=body,
                                             timeout=self.timeout)
                    raw = resp.content
                except requests.RequestException as exc:
                    raise ConnectionError(_describe(exc)) from None
                finally:
                    self.limiter.settle(entry)
            if resp.status_code == 401 and refused is None:
                refused = token
                continue
            parsed: Any = None
            if raw:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    if resp.status_code < 300:
                        raise ConnectionError("the answer was cut short") from None
            return resp.status_code, parsed, _retry_after(resp.headers.get("Retry-After"))
        raise AssertionError("unreachable")

    def _check(self, status: int, body: Any, what: str) -> None:
        """Raise for answers that no retry can change."""
        code = _error_code(body)
        if status == 401:
            raise AuthError(f"Microsoft Graph refused the access token for {self.s.account} "
                            f"({code or 'unauthorized'}): run `replytime auth "
                            f"{self.s.account}`")
        if status == 403:
            raise AuthError(
                f"Microsoft Graph denied access to {self.s.mailbox}'s {what} ({code or '403'});"
                " check the app's permissions (and the application access policy for "
                "app-only access)")
        if status == 410 or code.lower() == "syncstatenotfound":
            raise _Expired()
        if status == 400:
            said = body["error"].get("message", "") if code else ""
            raise SourceUnreachable(f"Microsoft Graph rejected the request for {what} "
                                    f"({code or '400'}: {str(said)[:200]})")

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        with self._count_lock:
            self.retries += 1
            if retry_after is not None:
                self.throttled += 1
        if retry_after is not None:
            time.sleep(min(retry_after, 300.0))  # Graph's own wait, obeyed
        else:
            time.sleep(backoff_delay(attempt, base=self.retry_base, cap=self.retry_cap))

    def _give_up(self, what: str, last: str) -> SourceUnreachable:
        return SourceUnreachable(
            f"Microsoft Graph still failing after {self.max_attempts} attempts ({what}: "
            f"{last}); everything fetched so far is kept, run sync again later")

    def get(self, url: str, what: str, *, page: bool = False) -> dict[str, Any] | None:
        """GET with retries; None for 404."""
        prefer = f"odata.maxpagesize={self.page_size}" if page else None
        last = ""
        for attempt in range(self.max_attempts):
            try:
                status, body, after = self._send("GET", url, 1, prefer=prefer)
            except ConnectionError as exc:
                last = str(exc)
                self._wait(attempt, None)
                continue
            if status < 300 and isinstance(body, dict):
                return body
            if status == 404:
                return None
            if status not in _RETRY:
                self._check(status, body, what)
            last = f"HTTP {status} {_error_code(body)}".strip()
            self._wait(attempt, after if status in (429, 503) else None)
        raise self._give_up(what, last)

    def batch(self, urls: dict[str, str], what: str) -> dict[str, dict[str, Any] | None]:
        """GET each relative URL in ``$batch`` requests of at most 20; id -> body (None when
        the message is gone). Failed parts are sent again."""
        pending = dict(urls)
        done: dict[str, dict[str, Any] | None] = {}
        attempts: dict[Any, int] = {}
        last = ""
        while pending:
            chunk = list(pending.items())[:MAX_BATCH]
            payload = {"requests": [{"id": i, "method": "GET", "url": u} for i, u in chunk]}
            wait: float | None = None
            failed: list[str] = []
            try:
                status, body, after = self._send("POST", f"{self.base}/$batch", len(chunk),
                                                 payload)
            except ConnectionError as exc:
                status, body, after, last = 0, None, None, str(exc)
            if status == 200 and isinstance(body, dict) and "responses" in body:
                answered = {str(r.get("id")): r for r in body["responses"]}
                for i, _ in chunk:
                    part = answered.get(i)
                    pstatus = int(part.get("status", 0)) if part else 0
                    pbody = part.get("body") if part else None
                    if pstatus == 200 and isinstance(pbody, dict):
                        done[i] = pbody
                        del pending[i]
                    elif pstatus == 404:
                        done[i] = None
                        del pending[i]
                    elif pstatus in _RETRY or part is None:
                        failed.append(i)
                        last = f"HTTP {pstatus} {_error_code(pbody)}".strip()
                        if pstatus in (429, 503):
                            ra = _retry_after((part.get("headers") or {}).get("Retry-After"))
                            wait = max(wait or 0.0, ra or 0.0) if ra is not None else wait
                    else:
                        self._check(pstatus, pbody, what)
                        raise SourceUnreachable(f"Microsoft Graph answered {pstatus} for "
                                                f"{what}")
            else:
                if status and status not in _RETRY:
                    self._check(status, body, what)
                failed = [i for i, _ in chunk]
                last = last or f"HTTP {status} {_error_code(body)}".strip()
                if status in (429, 503):
                    wait = after
            if failed:
                worst = count_failures(attempts, failed)
                if worst >= self.max_attempts:
                    raise self._give_up(what, last)
                self._wait(worst - 1, wait)
        return done


def _number(o: dict[str, Any], name: str, default: float, key: str) -> float:
    value = o.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{key}.{name}", "must be a positive number")
    return value


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", ""))
    return ""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


# -- rows to records -----------------------------------------------------------------------

def _address(value: Any) -> str | None:
    if isinstance(value, dict):
        addr = (value.get("emailAddress") or {}).get("address")
        return str(addr) if addr else None
    return None


def _addresses(values: Any) -> str:
    return ", ".join(a for a in (_address(v) for v in values or ()) if a)


def _ms(text: str | None) -> int | None:
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def is_full(row: dict[str, Any]) -> bool:
    """A row with the selected properties (not a changed row's id/isRead/parentFolderId)."""
    return "receivedDateTime" in row or "internetMessageId" in row


def needs_headers(row: dict[str, Any], expand: bool) -> bool:
    return expand and "internetMessageHeaders" not in row and (
        "singleValueExtendedProperties" not in row)


def record_of(row: dict[str, Any], label: str, keep: tuple[str, ...]) -> MessageRecord:
    pairs: list[tuple[str, str]] = []
    author = _address(row.get("from")) or _address(row.get("sender"))
    if author:
        pairs.append(("From", author))
    for name, prop in (("To", "toRecipients"), ("Cc", "ccRecipients"),
                       ("Reply-To", "replyTo")):
        value = _addresses(row.get(prop))
        if value:
            pairs.append((name, value))
    if row.get("subject") is not None:
        pairs.append(("Subject", str(row["subject"])))
    if row.get("internetMessageId"):
        pairs.append(("Message-ID", str(row["internetMessageId"])))
    for prop in row.get("singleValueExtendedProperties") or ():
        name = {IN_REPLY_TO.lower(): "In-Reply-To", REFERENCES.lower(): "References"}.get(
            str(prop.get("id", "")).lower())
        if name and prop.get("value"):
            pairs.append((name, str(prop["value"])))
    pairs.extend((str(h.get("name", "")), str(h.get("value", "")))
                 for h in row.get("internetMessageHeaders") or ())
    received = _ms(row.get("receivedDateTime")) or _ms(row.get("sentDateTime"))
    return record_from_fields(pairs, server_time_ms=received,
                              provider_thread_id=row.get("conversationId") or None,
                              labels=(label,), keep=keep)


# -- the sync -------------------------------------------------------------------------------

class _Sync:
    def __init__(self, cache: Any, account: Account, config: Config,
                 progress: Progress | None) -> None:
        self.cache = cache
        self.name = account.name
        self.progress = progress
        self.keep = config.kept_headers()
        self.s = settings(account)
        o = account.options
        key = f"accounts.{account.name}"
        folders = o.get("folders", list(DEFAULT_FOLDERS))
        if isinstance(folders, str):
            folders = [folders]
        if not isinstance(folders, list) or not folders or not all(
                isinstance(f, str) and f.strip() for f in folders):
            raise ConfigError(f"{key}.folders", "must be a list of folder names")
        self.folders = list(dict.fromkeys(f.strip() for f in folders))
        self.since_ms = _since(o.get("since"), f"{key}.since")
        self.client = Client(self.s, o)
        self.expand = self.s.scope == "read"  # Mail.ReadBasic excludes extended properties
        box = "me" if self.s.mailbox == "me" else f"users/{quote(self.s.mailbox)}"
        self.box = f"/{box}"
        self.stats = SyncStats(account=account.name)
        self.query = f"$select={SELECT}" + (f"&$expand={EXPAND}" if self.expand else "")

    def commit(self, items: list[tuple[str, MessageRecord]], state: dict[str, Any],
               removed: Iterable[str] = ()) -> None:
        removed = list(removed)
        self.cache.write_batch(self.name, items, account_type="microsoft", state=state,
                               removed=removed)
        self.stats.fetched += len(items)
        self.stats.removed += len(removed)
        if self.progress is not None and items:
            self.progress.advance(len(items), note=f"{self.client.requests} requests")

    def resolve(self, name: str) -> tuple[str, str]:
        """(folder id, display name) of a configured folder: a well-known name (inbox,
        sentitems, "Sent Items") or a top-level folder's display name."""
        wk = name.replace(" ", "").lower()
        if wk in WELL_KNOWN:
            body = self.client.get(f"{self.base}/mailFolders/{wk}?$select=id,displayName",
                                   f"folder {name}")
            if body is not None:
                return str(body["id"]), str(body.get("displayName") or name)
        escaped = name.replace("'", "''")
        body = self.client.get(
            f"{self.base}/mailFolders?$filter=displayName eq '{quote(escaped)}'"
            "&$select=id,displayName", f"folder {name}") or {}
        found = body.get("value") or []
        if not found:
            raise ConfigError(f"accounts.{self.name}.folders",
                              f"{self.s.mailbox} has no folder {name!r}")
        return str(found[0]["id"]), str(found[0].get("displayName") or name)

    @property
    def base(self) -> str:
        return f"{self.s.graph_endpoint}{self.box}"

    def run(self, full: bool) -> SyncStats:
        started = time.monotonic()
        state = self.cache.account_state(self.name)
        folders: dict[str, Any] = dict(state.get("folders") or {})
        if full:
            folders = {k: {**v, "delta": None, "next": None, "restart": True}
                       for k, v in folders.items()}
        for name in self.folders:
            self.folder(name, folders)
        self.stats.seconds = time.monotonic() - started
        c = self.client
        self.stats.extra.update(requests=c.requests, retries=c.retries,
                                throttled=c.throttled, token_refreshes=c.tokens.refreshes)
        return self.stats

    def folder(self, name: str, folders: dict[str, Any]) -> None:
        fs = dict(folders.get(name) or {})
        if not fs.get("id"):
            fid, label = self.resolve(name)
            fs = {"id": fid, "label": label, "delta": None, "next": None,
                  "restart": bool(self.cache.known_locations(self.name, f"{label}/"))}
        label = fs["label"]

        def state() -> dict[str, Any]:
            return {"folders": {**folders, name: fs}}

        url = fs.get("next") or fs.get("delta") or (
            f"{self.base}/mailFolders/{fs['id']}/messages/delta?{self.query}")
        while True:
            try:
                page = self.client.get(url, f"folder {name}", page=True)
            except _Expired:
                self.stats.extra["delta_expired"] = self.stats.extra.get("delta_expired", 0) + 1
                fs = {**fs, "delta": None, "next": None, "restart": True}
                folders[name] = fs
                self.commit([], state())
                url = f"{self.base}/mailFolders/{fs['id']}/messages/delta?{self.query}"
                continue
            if page is None:  # the folder itself is gone: resolve it again next time
                folders.pop(name, None)
                raise ConfigError(f"accounts.{self.name}.folders",
                                  f"folder {name!r} no longer exists in {self.s.mailbox}")
            items, removed = self.rows(page.get("value") or [], label)
            nxt, delta = page.get("@odata.nextLink"), page.get("@odata.deltaLink")
            if nxt:
                fs = {**fs, "next": nxt}
                folders[name] = fs
                self.commit(items, state(), removed)
                url = nxt
                continue
            if fs.get("restart"):
                live = {f"{label}/{i}" for i in self.list_ids(fs["id"], name)}
                live.update(loc for loc, _ in items)
                known = self.cache.known_locations(self.name, f"{label}/")
                removed = sorted(set(removed) | (known - live))
            fs = {"id": fs["id"], "label": label, "delta": delta, "next": None,
                  "restart": False}
            folders[name] = fs
            self.commit(items, state(), removed)
            return

    def rows(self, rows: list[dict[str, Any]], label: str
             ) -> tuple[list[tuple[str, MessageRecord]], list[str]]:
        """A delta page's rows as (location, record) to write and locations to remove."""
        out: dict[str, dict[str, Any]] = {}
        removed: list[str] = []
        refetch: list[str] = []
        known: set[str] | None = None
        for row in rows:
            mid = str(row.get("id", ""))
            if not mid:
                continue
            loc = f"{label}/{mid}"
            if "@removed" in row:
                out.pop(loc, None)
                removed.append(loc)
                continue
            if is_full(row):
                if needs_headers(row, self.expand):
                    refetch.append(mid)
                else:
                    out[loc] = row
                continue
            # A changed row (read, flagged, moved): what the cache has stays as it is.
            if known is None:
                known = self.cache.known_locations(self.name, f"{label}/")
            if loc not in known and loc not in out:
                refetch.append(mid)
        if refetch:
            urls = {str(i): f"{self.box}/messages/{quote(m)}?{self.query}"
                    for i, m in enumerate(dict.fromkeys(refetch))}
            ids = list(dict.fromkeys(refetch))
            got = self.fetch_parallel(urls)
            for i, body in got.items():
                if body is not None and is_full(body):
                    out[f"{label}/{ids[int(i)]}"] = body
        items: list[tuple[str, MessageRecord]] = []
        gone = set(removed)
        for loc, row in out.items():
            if row.get("isDraft") or loc in gone:
                continue
            if self.since_ms is not None:
                t = _ms(row.get("receivedDateTime"))
                if t is not None and t < self.since_ms:
                    continue
            items.append((loc, record_of(row, label, self.keep)))
        return items, removed

    def fetch_parallel(self, urls: dict[str, str]) -> dict[str, dict[str, Any] | None]:
        """``$batch`` requests of 20, up to 4 at once (the mailbox's concurrency limit)."""
        keys = list(urls)
        chunks = [{k: urls[k] for k in keys[i:i + MAX_BATCH]}
                  for i in range(0, len(keys), MAX_BATCH)]
        results: dict[str, dict[str, Any] | None] = {}
        if len(chunks) == 1:
            return self.client.batch(chunks[0], "messages")
        with ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT) as pool:
            for part in pool.map(lambda c: self.client.batch(c, "messages"), chunks):
                results.update(part)
        return results

    def list_ids(self, folder_id: str, name: str) -> set[str]:
        ids: set[str] = set()
        url: str | None = (f"{self.base}/mailFolders/{folder_id}/messages?$select=id"
                           f"&$top={PAGE_SIZE}")
        while url:
            page = self.client.get(url, f"folder {name}") or {}
            ids.update(str(m["id"]) for m in page.get("value") or [] if "id" in m)
            url = page.get("@odata.nextLink")
        return ids


def _since(value: Any, key: str) -> int | None:
    """``since`` as epoch ms. Filtered here, not with ``$filter=receivedDateTime ge``: Graph
    returns at most 5,000 messages for a filtered delta query (docs/configuration.md,
    "Microsoft 365")."""
    if value is None:
        return None
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        stamp = datetime(value.year, value.month, value.day, tzinfo=UTC)
    else:
        try:
            stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(key, f"{value!r} is not a date (YYYY-MM-DD)") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def sync(cache: Any, account: Account, config: Config, *, progress: Progress | None = None,
         full: bool = False) -> SyncStats:
    """Bring the cache up to date with the account's Microsoft mailbox (headers only)."""
    return _Sync(cache, account, config, progress).run(full)

