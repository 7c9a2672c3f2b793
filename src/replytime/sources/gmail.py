"""Gmail connector: OAuth set-up, and a quota-aware, incremental, resumable header sync.

Cost model (Gmail API quota units): threads.list 10 per page of up to 500 threads,
threads.get 10 per thread whatever its size, messages.get 5, history.list 2, getProfile 1.
A full sync therefore lists threads and fetches each one with ``threads.get`` (format
metadata, only the headers we need) inside batch requests; an incremental sync reads
``history.list`` and re-fetches only what changed, choosing per thread the cheaper of
``threads.get`` (10) and one ``messages.get`` (5) per changed message.

Sync state, stored with every committed batch (so a killed sync resumes exactly):

    {"history_id": "<id to continue from>",                 # after a completed sync
     "full": {"history_id": h0, "page_token": t, "more": b,  # a full sync under way
              "pending": [thread ids], "reconcile": b},
     "inc":  {"history_id": h1, "pending": [["t"|"m", id]]}} # an incremental one under way
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httplib2
from google.auth.exceptions import RefreshError, TransportError
from google.auth.transport.requests import Request
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from replytime.config import Account, Config
from replytime.errors import AuthError, ConfigError, SourceUnreachable
from replytime.model import MessageRecord
from replytime.progress import Progress
from replytime.sources import SyncStats, write_secret
from replytime.sources.headers import WANTED_HEADERS, record_from_fields
from replytime.sources.retry import MovingWindowLimiter, backoff_delay, count_failures

log = logging.getLogger(__name__)

SCOPES = {
    "readonly": "https://www.googleapis.com/auth/gmail.readonly",
    "metadata": "https://www.googleapis.com/auth/gmail.metadata",
}
DEFAULT_ENDPOINT = "https://gmail.googleapis.com/"
COST = {"profile": 1, "threads.list": 10, "threads.get": 10, "messages.list": 5,
        "messages.get": 5, "history.list": 2}
HISTORY_TYPES = ["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]
PAGE_SIZE = 500  # the largest page Gmail serves for threads/messages/history lists
MAX_BATCH = 50  # Gmail asks for at most 50 requests per batch
_TRANSIENT = {429, 500, 502, 503, 504}
_RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "backendError"}


# -- credentials ------------------------------------------------------------------------

def _path(value: Any, key: str, account: Account) -> Path:
    if not value:
        raise ConfigError(f"accounts.{account.name}.{key}", "is required for a gmail account")
    return Path(os.path.expandvars(str(value))).expanduser()


def _scope(account: Account, scope: str | None) -> str:
    name = (scope or account.options.get("scope") or "readonly").strip()
    url = SCOPES.get(name.lower(), name)
    if url not in SCOPES.values():
        raise ConfigError(f"accounts.{account.name}.scope", "must be 'readonly' or 'metadata'")
    if url == SCOPES["metadata"] and account.options.get("query"):
        raise ConfigError(
            f"accounts.{account.name}.query",
            "the gmail.metadata scope does not allow search queries; remove `query` or use "
            "scope = \"readonly\"",
        )
    return url


def save_token(creds: Credentials, path: Path) -> None:
    """Write the authorized-user JSON atomically, readable by the owner only."""
    write_secret(path, creds.to_json())


def load_credentials(account: Account) -> tuple[Credentials, Path]:
    """The account's stored credentials; refuses a token file others can read."""
    path = _path(account.options.get("token_file"), "token_file", account)
    again = f"run `replytime auth gmail {account.name}`"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AuthError(f"no Gmail token at {path}: {again}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthError(
            f"refusing to read {path}: it is readable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod 600 {path}`"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        creds = Credentials.from_authorized_user_info(info)
        # from_authorized_user_info always sets Google's token endpoint; honour the file's
        # (and above it the config's) override, for tests and private deployments.
        token_uri = account.options.get("token_uri") or info.get("token_uri")
        if token_uri:
            creds = creds.with_token_uri(str(token_uri))
    except (ValueError, OSError):
        raise AuthError(f"{path} is not a Google authorized-user token file: {again}") from None
    return creds, path


def authorize(account: Account, *, no_browser: bool = False, scope: str | None = None) -> None:
    """Installed-app OAuth: ask the user for consent, store the token file (mode 0600).

    The browser flow listens on a loopback port (``run_local_server``). ``no_browser`` is for
    servers: Google retired the copy-the-code ("oob") flow, and ``run_local_server`` without
    a browser needs the user's browser to reach the server's loopback port (an SSH tunnel).
    Instead we print the consent URL; after consenting, the user's browser is sent to
    ``http://localhost:1/?code=...`` which fails to load on their machine, and they paste that
    address (or just the code) back here. No port has to be reachable.
    """
    from google_auth_oauthlib.flow import InstalledAppFlow

    secrets = _path(account.options.get("client_secrets"), "client_secrets", account)
    token_path = _path(account.options.get("token_file"), "token_file", account)
    scope_url = _scope(account, scope)
    if not secrets.is_file():
        raise ConfigError(f"accounts.{account.name}.client_secrets", f"{secrets} does not exist")
    try:
        flow = InstalledAppFlow.from_client_secrets_file(str(secrets), scopes=[scope_url])
    except ValueError as exc:
        raise ConfigError(f"accounts.{account.name}.client_secrets",
                          f"{secrets} is not an OAuth client file ({exc})") from None
    try:
        if no_browser:
            flow.redirect_uri = "http://localhost:1/"
            url, state = flow.authorization_url(access_type="offline", prompt="consent")
            print(f"Open this URL in a browser on any machine and allow access:\n\n{url}\n\n"
                  "The browser then fails to load a http://localhost:1/ page; copy that page's "
                  "full address (or just its code= value) and paste it here:", file=sys.stderr)
            answer = sys.stdin.readline().strip()
            code = answer
            if "code=" in answer:
                query = parse_qs(urlsplit(answer).query)
                if query.get("state", [state])[0] != state:
                    raise AuthError("the pasted address belongs to another sign-in attempt")
                code = query["code"][0]
            if not code:
                raise AuthError("no authorization code was pasted")
            flow.fetch_token(code=code)
            creds = flow.credentials
        else:
            creds = flow.run_local_server(port=0, access_type="offline", prompt="consent")
    except AuthError:
        raise
    except Exception as exc:  # oauthlib raises many types: all mean "consent failed"
        raise AuthError(f"Google sign-in failed ({type(exc).__name__})") from None
    if not creds.refresh_token:
        raise AuthError("Google returned no refresh token; revoke the app's access and retry")
    save_token(creds, token_path)


# -- the API session: quota, retries, batches ----------------------------------------------

class _Session:
    def __init__(self, account: Account, creds: Credentials, token_path: Path) -> None:
        o = account.options
        self.account = account
        self.creds = creds
        self.token_path = token_path
        self.saved_token = creds.token
        endpoint = str(o.get("api_endpoint") or DEFAULT_ENDPOINT)
        self.service = build(
            "gmail", "v1", credentials=creds, static_discovery=True, cache_discovery=False,
            client_options={"api_endpoint": endpoint},
        )
        # new_batch_http_request() would use the discovery document's rootUrl and ignore
        # api_endpoint, so the batch URI is built from the endpoint we were given.
        self.batch_uri = endpoint.rstrip("/") + "/batch/gmail/v1"
        self.limiter = MovingWindowLimiter(
            float(o.get("quota_rate", 250)), window=float(o.get("quota_window", 1.0))
        )
        self.max_attempts = int(o.get("max_attempts", 8))
        self.retry_base = float(o.get("retry_base", 0.5))
        self.retry_cap = float(o.get("retry_cap", 32.0))
        self.max_batch = int(o.get("batch_size", MAX_BATCH))
        self.requests = 0
        self.retries = 0

    def again(self) -> str:
        return f"run `replytime auth gmail {self.account.name}`"

    def save_if_refreshed(self) -> None:
        if self.creds.token and self.creds.token != self.saved_token:
            save_token(self.creds, self.token_path)
            self.saved_token = self.creds.token

    def ensure_token(self) -> None:
        if not self.creds.valid:
            try:
                self.creds.refresh(Request())
            except RefreshError:
                raise AuthError(
                    f"the Gmail token of {self.account.name} is expired or revoked: "
                    f"{self.again()}"
                ) from None
            except TransportError as exc:
                raise SourceUnreachable(f"cannot reach Google's token endpoint ({exc})") from None
            self.save_if_refreshed()

    def _raise_for(self, exc: HttpError, what: str, *, missing_ok: bool = True) -> bool:
        """Raise for errors a retry cannot fix; True for 404 (gone), False to retry."""
        status = exc.resp.status
        if status in _TRANSIENT:
            return False
        if status == 404 and missing_ok:
            return True
        reasons = {d.get("reason") for d in (exc.error_details or []) if isinstance(d, dict)}
        if status == 403 and reasons & _RATE_REASONS:
            return False
        if status in (401, 403):
            raise self._auth_error(exc) from None
        raise SourceUnreachable(f"Gmail answered {status} to {what} ({exc.reason})") from None

    def _auth_error(self, exc: Exception) -> AuthError:
        if isinstance(exc, HttpError) and exc.resp.status == 403:
            return AuthError(f"Gmail refused access ({exc.reason}): {self.again()}")
        return AuthError(f"the Gmail token of {self.account.name} was refused: {self.again()}")

    def _attempt(
        self, what: str, cost: int, execute: Callable[[], Any], *, missing_ok: bool = True
    ) -> tuple[Any, str | None]:
        """Send one HTTP request paced by the quota: (response, None); (None, None) when the
        item is gone (404); (None, reason) after a transient failure worth retrying."""
        slot = self.limiter.acquire_slot(cost)
        self.requests += 1
        try:
            return execute(), None
        except HttpError as exc:
            if self._raise_for(exc, what, missing_ok=missing_ok):
                return None, None
            return None, f"HTTP {exc.resp.status}"
        except RefreshError:
            raise self._auth_error(RefreshError()) from None
        except (OSError, http.client.HTTPException, httplib2.HttpLib2Error,
                TransportError) as exc:
            # Dropped connection, timeout, an answer cut short (IncompleteRead): retry.
            return None, type(exc).__name__
        finally:
            self.limiter.settle(slot)

    def _give_up(self, api: str, last: str | None) -> SourceUnreachable:
        return SourceUnreachable(
            f"Gmail still failing after {self.max_attempts} attempts ({api}: {last}); "
            "everything fetched so far is kept, run sync again later"
        )

    def call(self, api: str, make: Callable[[], Any]) -> dict[str, Any] | None:
        """One request with quota pacing and retries; None for 404."""
        last: str | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                self.retries += 1
                time.sleep(backoff_delay(attempt - 1, base=self.retry_base, cap=self.retry_cap))
            body, last = self._attempt(api, COST[api], lambda: make().execute(num_retries=0))
            if last is None:
                return body
        raise self._give_up(api, last)

    def batch_size(self, api: str) -> int:
        # About a quarter of the quota window per batch: big enough to amortise the HTTP
        # round trip, small enough that the window stays nearly full (see retry.py).
        return max(1, min(self.max_batch, int(self.limiter.budget / (4 * COST[api]))))

    def fetch(
        self, api: str, ids: list[str], make: Callable[[str], Any],
        on_batch: Callable[[list[tuple[str, dict[str, Any] | None]], list[str]], None],
    ) -> None:
        """Fetch ``ids`` with batch requests; after each batch, call
        ``on_batch(done [(id, body or None when gone)], still_pending ids)``."""
        pending = list(ids)
        attempts: dict[Any, int] = {}
        size = self.batch_size(api)
        whole_failures = 0
        while pending:
            chunk = pending[:size]
            results: dict[str, tuple[dict[str, Any] | None, HttpError | None]] = {}

            def callback(rid: str, resp: Any, exc: HttpError | None, results: dict[
                    str, tuple[dict[str, Any] | None, HttpError | None]] = results) -> None:
                results[rid] = (resp, exc)

            batch = BatchHttpRequest(callback=callback, batch_uri=self.batch_uri)
            for i, item in enumerate(chunk):
                batch.add(make(item), request_id=str(i))
            _, failed_whole = self._attempt("a batch", COST[api] * len(chunk), batch.execute,
                                            missing_ok=False)
            if failed_whole is not None:
                whole_failures += 1
                if whole_failures >= 2 and size > 1:
                    size = max(1, size // 2)  # repeated failures: smaller batches
                done: list[tuple[str, dict[str, Any] | None]] = []
                retry = chunk
            else:
                whole_failures = 0
                done, retry = [], []
                for i, item in enumerate(chunk):
                    resp, exc = results.get(str(i), (None, None))
                    if exc is None and resp is not None:
                        done.append((item, resp))
                        continue
                    if exc is not None and self._raise_for(exc, api):
                        done.append((item, None))  # deleted since it was listed
                    else:
                        retry.append(item)
                failed_whole = f"{len(retry)} of {len(chunk)} parts failed" if retry else None
            retry_set = set(retry)
            pending = retry + [x for x in pending[len(chunk):] if x not in retry_set]
            on_batch(done, pending)
            if retry:
                worst = count_failures(attempts, retry)
                if worst >= self.max_attempts:
                    raise self._give_up(api, failed_whole)
                self.retries += 1
                time.sleep(backoff_delay(worst - 1, base=self.retry_base, cap=self.retry_cap))
            elif size < self.batch_size(api):
                size += 1  # grow back slowly after a rough patch


# -- the sync -------------------------------------------------------------------------------

def _records(
    messages: Iterable[dict[str, Any]], keep: tuple[str, ...]
) -> Iterator[tuple[str, MessageRecord]]:
    for m in messages:
        headers = m.get("payload", {}).get("headers", [])
        internal = m.get("internalDate")
        yield m["id"], record_from_fields(
            ((h.get("name", ""), h.get("value", "")) for h in headers),
            server_time_ms=int(internal) if internal else None,
            provider_thread_id=m.get("threadId"),
            labels=m.get("labelIds", []),
            keep=keep,
        )


class _Sync:
    def __init__(
        self, cache: Any, account: Account, config: Config, progress: Progress | None
    ) -> None:
        self.cache = cache
        self.account = account
        self.name = account.name
        self.progress = progress
        self.keep = config.kept_headers()
        self.metadata_headers = list(WANTED_HEADERS) + [
            h for h in self.keep if h.lower() not in {w.lower() for w in WANTED_HEADERS}
        ]
        creds, token_path = load_credentials(account)
        self.s = _Session(account, creds, token_path)
        self.users = self.s.service.users()
        self.query = account.options.get("query") or None
        labels = account.options.get("labels") or []
        self.labels = [labels] if isinstance(labels, str) else list(labels)
        self.stats = SyncStats(account=account.name)

    # -- plumbing ------------------------------------------------------------------------
    def commit(
        self, items: list[tuple[str, MessageRecord]], state: dict[str, Any],
        removed: Iterable[str] = (),
    ) -> None:
        removed = list(removed)
        self.cache.write_batch(self.name, items, account_type="gmail", state=state,
                               removed=removed)
        self.stats.fetched += len(items)
        self.stats.removed += len(removed)
        self.s.save_if_refreshed()
        if self.progress is not None and items:
            self.progress.advance(len(items), note=f"{self.s.limiter.units_per_second():.0f} "
                                  "units/s")

    def _get_thread(self, tid: str) -> Any:
        return self.users.threads().get(userId="me", id=tid, format="metadata",
                                         metadataHeaders=self.metadata_headers)

    def _get_message(self, mid: str) -> Any:
        return self.users.messages().get(userId="me", id=mid, format="metadata",
                                         metadataHeaders=self.metadata_headers)

    def _messages_of(self, body: dict[str, Any] | None) -> list[dict[str, Any]]:
        if body is None:
            return []
        return body.get("messages", [body] if "payload" in body else [])

    # -- full ----------------------------------------------------------------------------
    def full(self, previous: str | None, job: dict[str, Any] | None) -> None:
        if job is None:
            # The history id is taken before listing, so changes made while we list are
            # replayed by the next incremental sync: nothing can fall between the two.
            profile = self.s.call("profile", lambda: self.users.getProfile(userId="me"))
            assert profile is not None
            job = {"history_id": profile["historyId"], "page_token": None, "more": True,
                   "pending": [], "reconcile": bool(self.cache.known_locations(self.name))}
            if self.progress is not None and not self.query and not self.labels:
                self.progress.set_total(int(profile.get("messagesTotal", 0)) or None)
        self.stats.extra["mode"] = "full"

        def state() -> dict[str, Any]:
            return {"history_id": previous, "full": job}

        while job["pending"] or job["more"]:
            if job["pending"]:
                def on_batch(done: list[tuple[str, dict[str, Any] | None]],
                             pending: list[str]) -> None:
                    job["pending"] = pending
                    items = [r for _, body in done
                             for r in _records(self._messages_of(body), self.keep)]
                    self.commit(items, state())

                self.s.fetch("threads.get", job["pending"], self._get_thread, on_batch)
                continue
            token = job["page_token"]
            kwargs: dict[str, Any] = {"userId": "me", "maxResults": PAGE_SIZE}
            if token:
                kwargs["pageToken"] = token
            if self.query:
                kwargs["q"] = self.query
            if self.labels:
                kwargs["labelIds"] = self.labels
            page = self.s.call("threads.list", lambda kw=kwargs: self.users.threads().list(**kw))
            page = page or {}
            job["pending"] = [t["id"] for t in page.get("threads", [])]
            job["page_token"] = page.get("nextPageToken")
            job["more"] = bool(job["page_token"])
            self.commit([], state())

        removed: list[str] = []
        if job["reconcile"]:
            # Replacing an older cache (expired history): drop what no longer exists. One
            # messages.list page (5 units) covers 500 messages.
            existing = self._all_message_ids()
            removed = sorted(self.cache.known_locations(self.name) - existing)
        self.commit([], {"history_id": job["history_id"]}, removed)

    def _all_message_ids(self) -> set[str]:
        ids: set[str] = set()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"userId": "me", "maxResults": PAGE_SIZE}
            if token:
                kwargs["pageToken"] = token
            page = self.s.call("messages.list",
                               lambda kw=kwargs: self.users.messages().list(**kw)) or {}
            ids.update(m["id"] for m in page.get("messages", []))
            token = page.get("nextPageToken")
            if not token:
                return ids

    # -- incremental -------------------------------------------------------------------
    def incremental(self, start: str, job: dict[str, Any] | None) -> bool:
        """Apply history since ``start``; False when that history has expired."""
        self.stats.extra["mode"] = "incremental"
        if job is None:
            changed: dict[str, str] = {}  # message id -> thread id, in order of change
            deleted: set[str] = set()
            token: str | None = None
            latest = start
            while True:
                kwargs: dict[str, Any] = {"userId": "me", "startHistoryId": start,
                                          "historyTypes": HISTORY_TYPES,
                                          "maxResults": PAGE_SIZE}
                if token:
                    kwargs["pageToken"] = token
                page = self.s.call("history.list",
                                   lambda kw=kwargs: self.users.history().list(**kw))
                if page is None:
                    return False  # 404: the start id is too old
                for rec in page.get("history", []):
                    for kind in ("messagesAdded", "labelsAdded", "labelsRemoved"):
                        for e in rec.get(kind, []):
                            m = e["message"]
                            changed[m["id"]] = m.get("threadId", m["id"])
                            deleted.discard(m["id"])
                    for e in rec.get("messagesDeleted", []):
                        changed.pop(e["message"]["id"], None)
                        deleted.add(e["message"]["id"])
                latest = page.get("historyId", latest)
                token = page.get("nextPageToken")
                if not token:
                    break
            by_thread: dict[str, list[str]] = {}
            for mid, tid in changed.items():
                by_thread.setdefault(tid, []).append(mid)
            # threads.get costs 10 whatever the size, messages.get 5 each: pick the cheaper.
            plan = [["t", tid] if len(mids) > 1 else ["m", mids[0]]
                    for tid, mids in by_thread.items()]
            job = {"history_id": latest, "pending": plan}
            gone = sorted(deleted & self.cache.known_locations(self.name)) if deleted else []
            if not plan:
                self.commit([], {"history_id": latest}, gone)
                return True
            self.commit([], {"history_id": start, "inc": job}, gone)

        for kind, api, make in (("t", "threads.get", self._get_thread),
                                ("m", "messages.get", self._get_message)):
            ids = [x for k, x in job["pending"] if k == kind]
            if not ids:
                continue

            def on_batch(done: list[tuple[str, dict[str, Any] | None]], pending: list[str],
                         kind: str = kind) -> None:
                other = [p for p in job["pending"] if p[0] != kind]
                job["pending"] = other + [[kind, x] for x in pending]
                items = [r for _, body in done
                         for r in _records(self._messages_of(body), self.keep)]
                self.commit(items, {"history_id": start, "inc": job})

            self.s.fetch(api, ids, make, on_batch)
        self.commit([], {"history_id": job["history_id"]})
        return True

    def run(self, full: bool) -> SyncStats:
        started = time.monotonic()
        self.s.ensure_token()
        state = self.cache.account_state(self.name)
        previous = state.get("history_id")
        if state.get("full") is not None:
            self.full(previous, state["full"])  # resume an interrupted full sync
        elif full or not previous:
            self.full(previous, None)
        elif not self.incremental(previous, state.get("inc")):
            self.stats.extra["history_expired"] = True
            self.full(previous, {**self._fresh_full_job(), "reconcile": True})
        self.s.save_if_refreshed()
        self.stats.seconds = time.monotonic() - started
        units = self.s.limiter.total
        self.stats.extra.update(
            units=int(units),
            units_per_message=round(units / self.stats.fetched, 3) if self.stats.fetched else 0,
            units_per_second=round(self.s.limiter.units_per_second(), 1),
            requests=self.s.requests,
            retries=self.s.retries,
        )
        return self.stats

    def _fresh_full_job(self) -> dict[str, Any]:
        profile = self.s.call("profile", lambda: self.users.getProfile(userId="me"))
        assert profile is not None
        return {"history_id": profile["historyId"], "page_token": None, "more": True,
                "pending": []}


def sync(
    cache: Any, account: Account, config: Config, *, progress: Progress | None = None,
    full: bool = False,
) -> SyncStats:
    """Bring the cache up to date with the account's mailbox (headers only)."""
    _scope(account, None)  # refuses a query with the metadata scope before any request
    return _Sync(cache, account, config, progress).run(full)
