"""Gmail connector against the real google-api-python-client and a fake Gmail server."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_gmail import FakeGmail, generate_mailbox  # noqa: E402

from replytime.config import Account, Config, FormRule, LeadFilters  # noqa: E402
from replytime.errors import AuthError, ConfigError, SourceUnreachable  # noqa: E402
from replytime.sources import gmail  # noqa: E402
from replytime.sources.retry import MovingWindowLimiter, backoff_delay  # noqa: E402
from replytime.store import open_cache  # noqa: E402
from tests.leaks import shown  # noqa: E402

RATE = 4000.0  # fast quota for most tests; the benchmark runs the real 250 units/s
CONFIG = Config(leads=LeadFilters(forms=(FormRule("*", lead_address="header:x-lead-email"),)))
SECRET_MARKERS = ("ya29.", "refresh-secret", "client-secret-xyz")


@pytest.fixture
def fake() -> Iterator[FakeGmail]:
    server = FakeGmail(generate_mailbox(120, seed=3), quota_rate=RATE, seed=7)
    server.start()
    yield server
    server.stop()


def write_token(path: Path, fake: FakeGmail, *, token: str | None = None, mode: int = 0o600,
                expiry: str | None = None) -> None:
    info: dict[str, Any] = {"refresh_token": "refresh-secret-1", "client_id": "cid",
                            "client_secret": "client-secret-xyz",
                            "token_uri": fake.url + "token"}
    if token:
        info["token"] = token
    if expiry:
        info["expiry"] = expiry
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.write(fd, json.dumps(info).encode())
    os.close(fd)
    os.chmod(path, mode)


def make_account(tmp_path: Path, fake: FakeGmail, **options: Any) -> Account:
    token = tmp_path / "token.json"
    if not token.exists():
        write_token(token, fake)
    opts = {"token_file": str(token), "api_endpoint": fake.url, "quota_rate": fake.quota_rate,
            "retry_base": 0.005, "retry_cap": 0.05, "max_attempts": 8, **options}
    return Account("sales-gmail", "gmail", opts)


def synced(tmp_path: Path, fake: FakeGmail) -> tuple[Any, Account]:
    """A cache after a first full sync of ``fake``, and its account."""
    cache = open_cache(tmp_path / "c.sqlite")
    account = make_account(tmp_path, fake)
    gmail.sync(cache, account, CONFIG)
    return cache, account


def dump(cache: Any, account: str = "sales-gmail") -> dict[str, Any]:
    """Everything a sync writes, without row ids and timestamps."""
    c = cache.conn
    messages = c.execute(
        "SELECT msg_key, message_id, from_addr, to_addrs, cc_addrs, reply_to, subject, time_ms, "
        "time_offset, time_source, in_reply_to, refs, automated, content_type, "
        "provider_thread_id, extra, problems FROM messages ORDER BY msg_key").fetchall()
    locations = c.execute("SELECT account, location, msg_key, labels FROM locations "
                          "ORDER BY account, location").fetchall()
    return {"messages": messages, "locations": locations,
            "state": cache.account_state(account)}


def expected(fake: FakeGmail) -> dict[str, tuple[Any, ...]]:
    """Per Gmail id, the fields the cache must hold, computed from the fake's raw data."""
    out = {}
    for m in fake.messages.values():
        h = dict(m.headers)
        refs = h.get("References", "")
        out[m.id] = (
            h["Message-ID"].strip("<>"),
            h["From"].split("<")[-1].rstrip(">").lower(),
            h["To"],
            h.get("Cc", ""),
            h["Subject"],
            m.internal_date,
            h.get("In-Reply-To", "").strip("<>") or None,
            " ".join(r.strip("<>") for r in refs.split()),
            6 if "List-Id" in h else 0,  # the List-Id marker (model.AUTOMATED_MARKERS)
            m.thread_id,
            json.dumps({"x-lead-email": h["X-Lead-Email"]}) if "X-Lead-Email" in h else "{}",
            ",".join(sorted(m.labels)),
        )
    return out


def cached(cache: Any, account: str = "sales-gmail") -> dict[str, tuple[Any, ...]]:
    rows = cache.conn.execute(
        "SELECT l.location, m.message_id, m.from_addr, m.to_addrs, m.cc_addrs, m.subject, "
        "m.time_ms, m.in_reply_to, m.refs, m.automated, m.provider_thread_id, m.extra, l.labels "
        "FROM locations l JOIN messages m ON m.msg_key = l.msg_key WHERE l.account = ?",
        (account,))
    return {r[0]: tuple(r[1:]) for r in rows}


def calls_since(fake: FakeGmail, mark: int) -> list[str]:
    return [e.api for e in fake.log[mark:]]


# -- full and incremental -------------------------------------------------------------------

def test_full_sync_stores_every_message_exactly(fake: FakeGmail, tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "c.sqlite")
    stats = gmail.sync(cache, make_account(tmp_path, fake), CONFIG)
    assert cached(cache) == expected(fake)
    assert len(fake.messages) == 120
    assert stats.fetched == 120
    assert stats.removed == 0
    assert stats.extra["mode"] == "full"
    threads = len(fake.threads)
    # One getProfile, one threads.list page, one threads.get per thread, nothing else.
    apis = [e.api for e in fake.log if e.api not in ("batch", "token")]
    assert apis.count("profile") == 1
    assert apis.count("threads.list") == 1
    assert apis.count("threads.get") == threads
    assert len(apis) == threads + 2
    assert all(e.part for e in fake.calls("threads.get"))
    assert fake.units_total == 1 + 10 + 10 * threads
    assert fake.units_total / 120 < 5  # cheaper than one messages.get per message
    assert fake.rejected_429 == 0
    assert cache.account_state("sales-gmail") == {"history_id": str(fake.history_id)}


def test_incremental_applies_adds_label_changes_and_deletes(
    fake: FakeGmail, tmp_path: Path
) -> None:
    cache, account = synced(tmp_path, fake)
    ids = sorted(fake.messages)
    thread = fake.messages[ids[0]].thread_id
    reply = fake.add_message(
        [("From", "rep1@acme.example"), ("To", "buyer1@client1.example"),
         ("Subject", "Re: Quote request 1"), ("Message-ID", "<new-reply@acme.example>"),
         ("In-Reply-To", "<m0.3@client.example>"), ("References", "<m0.3@client.example>")],
        thread_id=thread, labels=("SENT",))
    lead = fake.add_message(
        [("From", "New Buyer <new@prospect.example>"), ("To", "sales@acme.example"),
         ("Subject", "Pricing"), ("Message-ID", "<new-lead@prospect.example>"),
         ("X-Lead-Email", "new@prospect.example")])
    fake.relabel(ids[5], add=("Label_9",), remove=("UNREAD",))
    fake.relabel(lead, add=("STARRED",))
    fake.delete(ids[10])
    mark = len(fake.log)
    stats = gmail.sync(cache, account, CONFIG)
    assert cached(cache) == expected(fake)
    assert stats.extra["mode"] == "incremental"
    assert stats.fetched == 3
    assert stats.removed == 1
    apis = [a for a in calls_since(fake, mark) if a not in ("batch", "token")]
    # history, then each changed message on its own (messages.get, 5) since no thread had
    # two changes: reply, lead (added then relabelled: once), ids[5].
    assert sorted(apis) == ["history.list", "messages.get", "messages.get", "messages.get"]
    assert reply in cached(cache) and ids[10] not in cached(cache)
    assert cache.account_state("sales-gmail") == {"history_id": str(fake.history_id)}


def test_incremental_prefers_threads_get_for_several_changes_in_a_thread(
    fake: FakeGmail, tmp_path: Path
) -> None:
    cache, account = synced(tmp_path, fake)
    big = max(fake.threads.values(), key=len)
    for m in big[:3]:
        fake.relabel(m.id, add=("Label_3",))
    mark = len(fake.log)
    stats = gmail.sync(cache, account, CONFIG)
    assert [a for a in calls_since(fake, mark) if a != "batch"] == ["history.list", "threads.get"]
    assert stats.fetched == len(big)
    assert cached(cache) == expected(fake)


def test_nothing_new_costs_exactly_one_history_call(fake: FakeGmail, tmp_path: Path) -> None:
    cache, account = synced(tmp_path, fake)
    before = dump(cache)
    mark, units = len(fake.log), fake.units_total
    stats = gmail.sync(cache, account, CONFIG)
    assert calls_since(fake, mark) == ["history.list"]
    assert fake.units_total - units == 2
    assert stats.fetched == 0
    assert dump(cache) == before


def test_expired_history_falls_back_to_a_full_sync(fake: FakeGmail, tmp_path: Path) -> None:
    cache, account = synced(tmp_path, fake)
    gone = sorted(fake.messages)[7]
    fake.delete(gone)
    fake.add_message([("From", "x@prospect.example"), ("To", "sales@acme.example"),
                      ("Subject", "Hello"), ("Message-ID", "<late@prospect.example>")])
    fake.expire_history()
    mark = len(fake.log)
    stats = gmail.sync(cache, account, CONFIG)
    assert stats.extra["history_expired"] is True
    assert stats.extra["mode"] == "full"
    assert stats.removed == 1
    assert cached(cache) == expected(fake)
    apis = calls_since(fake, mark)
    assert apis[0] == "history.list"
    assert fake.calls("history.list", status=404) != []
    assert apis.count("messages.list") == 1  # one page finds what no longer exists
    assert cache.account_state("sales-gmail") == {"history_id": str(fake.history_id)}


def test_query_and_labels_select_threads(fake: FakeGmail, tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "c.sqlite")
    gmail.sync(cache, make_account(tmp_path, fake, labels=["Label_7"]), CONFIG)
    want = {m.id: v for m in fake.messages.values()
            for v in [expected(fake)[m.id]]
            if any("Label_7" in x.labels for x in fake.threads[m.thread_id])}
    assert cached(cache) == want
    assert len(want) == 27
    q = fake.calls("threads.list")[-1].params
    assert q["labelIds"] == ["Label_7"]


def test_metadata_scope_refuses_a_query(fake: FakeGmail, tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "c.sqlite")
    account = make_account(tmp_path, fake, scope="metadata", query="-in:chats")
    with pytest.raises(ConfigError, match="metadata scope does not allow search queries"):
        gmail.sync(cache, account, CONFIG)
    assert fake.log == []


# -- faults, quota, resumption ---------------------------------------------------------

@pytest.mark.parametrize("rate", [0.10, 0.30])
def test_faults_and_dropped_connections_still_give_the_exact_cache(
    fake: FakeGmail, tmp_path: Path, rate: float
) -> None:
    fake.fault_rate = rate  # of requests and of batch parts
    fake.drop_rate = 0.15  # of HTTP connections (there are few: batches of 5 threads)
    fake.truncate_rate = fake.slow_rate = rate / 2  # of answers: cut short, or late
    cache = open_cache(tmp_path / "c.sqlite")
    account = make_account(tmp_path, fake, batch_size=5)

    def sync_until_done() -> int:
        """Each sync completes or gives up with SourceUnreachable (exit 4) keeping only
        exact data; rerunning finishes. Returns the last run's retries plus one per run that
        gave up."""
        retries = 0
        for _ in range(10):
            try:
                return retries + gmail.sync(cache, account, CONFIG).extra["retries"]
            except SourceUnreachable:
                retries += 1
                got, want = cached(cache), expected(fake)
                assert all(want[k] == v for k, v in got.items())
        raise AssertionError("the sync never finished")

    assert sync_until_done() > 0
    assert cached(cache) == expected(fake)
    faults = [e for e in fake.log if e.status in (429, 500, 503)]
    assert len(faults) > 3
    assert fake.dropped > 0 and fake.truncated > 0 and fake.slowed > 0
    for i in range(4):
        fake.add_message([("From", f"p{i}@prospect.example"), ("To", "sales@acme.example"),
                          ("Subject", "More"), ("Message-ID", f"<more{i}@prospect.example>")])
    fake.delete(sorted(fake.messages)[3])
    sync_until_done()
    assert cached(cache) == expected(fake)


def test_client_stays_under_the_quota_without_429(tmp_path: Path) -> None:
    # The real 250 units/s with a one-second moving window.
    server = FakeGmail(generate_mailbox(150, seed=5), quota_rate=250.0)
    server.start()
    try:
        cache = open_cache(tmp_path / "c.sqlite")
        stats = gmail.sync(cache, make_account(tmp_path, server), CONFIG)
    finally:
        server.stop()
    assert server.rejected_429 == 0
    assert stats.fetched == 150
    assert stats.extra["units"] == server.units_total
    assert cached(cache) == expected(server)


def test_permanent_failure_raises_and_keeps_what_was_synced(
    fake: FakeGmail, tmp_path: Path
) -> None:
    cache = open_cache(tmp_path / "c.sqlite")
    account = make_account(tmp_path, fake, batch_size=5, max_attempts=3)
    fake.fail_after = 4  # profile, list, two batches, then an outage
    with pytest.raises(SourceUnreachable, match="after 3 attempts") as err:
        gmail.sync(cache, account, CONFIG)
    assert err.value.exit_code == 4
    kept = cached(cache)
    assert len(kept) == sum(len(fake.threads[t]) for t in list(
        fake._thread_order())[:10])  # the two committed batches of 5 threads
    want = expected(fake)
    assert {k: want[k] for k in kept} == kept
    fake.fail_after = None
    gmail.sync(cache, account, CONFIG)
    assert cached(cache) == want


RUNNER = textwrap.dedent("""
    import json, sys
    from replytime.store import open_cache
    from replytime.config import Account, Config, FormRule, LeadFilters
    from replytime.sources.gmail import sync
    db, options = sys.argv[1], json.loads(sys.argv[2])
    config = Config(leads=LeadFilters(forms=(FormRule("*", lead_address="header:x-lead-email"),)))
    sync(open_cache(db), Account("sales-gmail", "gmail", options), config)
""")


KILLS = 20  # SIGKILLs in one chain of restarts (issue 7), at seeded random request counts


def test_killed_sync_resumes_to_the_same_cache(tmp_path: Path) -> None:
    seed = 20261122
    rng = random.Random(seed)
    server = FakeGmail(generate_mailbox(600, seed=11), quota_rate=4000.0, seed=seed,
                       fault_rate=0.03)
    server.start()
    try:
        account = make_account(tmp_path, server, batch_size=4)
        reference = open_cache(tmp_path / "ref.sqlite")
        gmail.sync(reference, account, CONFIG)
        script = tmp_path / "run.py"
        script.write_text(RUNNER)
        db = tmp_path / "killed.sqlite"
        kills = finished_first = 0
        while kills < KILLS:
            assert finished_first < KILLS, "the sync kept finishing before the kill"
            mark = len(server.log)
            proc = subprocess.Popen([sys.executable, str(script), str(db),
                                     json.dumps(account.options)])
            # Kill after a random number (1-6) of this run's requests.
            target = mark + rng.randint(1, 6)
            deadline = time.monotonic() + 60
            while len(server.log) < target and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.001)
            if proc.poll() is not None:
                finished_first += 1
                continue
            proc.kill()
            proc.wait()
            kills += 1
        killed = open_cache(db)
        assert 0 < len(cached(killed)) < len(expected(server)), seed  # kills cut it short
        gmail.sync(killed, account, CONFIG)
        assert dump(killed) == dump(reference), seed
        assert cached(killed) == expected(server)
    finally:
        server.stop()


# -- credentials ------------------------------------------------------------------------

def test_refreshed_token_is_saved_back_with_mode_0600(fake: FakeGmail, tmp_path: Path) -> None:
    cache, account = synced(tmp_path, fake)
    token = Path(account.options["token_file"])
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    saved = json.loads(token.read_text())
    assert saved["token"] in fake.access_tokens
    assert saved["refresh_token"] == "refresh-secret-1"
    assert fake.refresh_count == 1
    # The saved access token is used next time: no new refresh.
    gmail.sync(cache, account, CONFIG)
    assert fake.refresh_count == 1
    # Google invalidates the access token: the client refreshes on 401 and saves again.
    fake.expire_tokens()
    fake.add_message([("From", "q@prospect.example"), ("Message-ID", "<q@prospect.example>")])
    stats = gmail.sync(cache, account, CONFIG)
    assert stats.fetched == 1
    assert fake.refresh_count == 2
    assert json.loads(token.read_text())["token"] in fake.access_tokens


def test_revoked_token_is_an_auth_error(fake: FakeGmail, tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "c.sqlite")
    account = make_account(tmp_path, fake)
    fake.revoked = True
    with pytest.raises(AuthError, match=r"run `replytime auth gmail sales-gmail`") as err:
        gmail.sync(cache, account, CONFIG)
    assert err.value.exit_code == 3


def test_access_token_refused_then_refresh_revoked_is_an_auth_error(
    fake: FakeGmail, tmp_path: Path
) -> None:
    write_token(tmp_path / "token.json", fake, token="ya29.stale", expiry="2999-01-01T00:00:00")
    cache = open_cache(tmp_path / "c.sqlite")
    account = make_account(tmp_path, fake)
    fake.revoked = True
    with pytest.raises(AuthError, match="auth gmail sales-gmail"):
        gmail.sync(cache, account, CONFIG)
    assert [e.status for e in fake.log] == [401, 400]  # getProfile refused, refresh refused


def test_token_readable_by_others_is_refused(fake: FakeGmail, tmp_path: Path) -> None:
    write_token(tmp_path / "token.json", fake, mode=0o644)
    cache = open_cache(tmp_path / "c.sqlite")
    with pytest.raises(AuthError, match=r"readable by other users \(mode 644\).*chmod 600"):
        gmail.sync(cache, make_account(tmp_path, fake), CONFIG)
    assert fake.log == []


def test_missing_token_file_says_how_to_authorize(fake: FakeGmail, tmp_path: Path) -> None:
    account = Account("x", "gmail", {"token_file": str(tmp_path / "none.json")})
    with pytest.raises(AuthError, match=r"no Gmail token at .*run `replytime auth gmail x`"):
        gmail.sync(open_cache(tmp_path / "c.sqlite"), account, CONFIG)


def test_save_token_is_0600_whatever_the_umask(fake: FakeGmail, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from google.oauth2.credentials import Credentials

    creds = Credentials("ya29.x", refresh_token="refresh-secret-1", client_id="c",
                        client_secret="s", token_uri=fake.url + "token")
    old = os.umask(0)
    try:
        target = tmp_path / "sub" / "t.json"
        gmail.save_token(creds, target)
        gmail.save_token(creds, target)  # replacing keeps the mode
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text())["refresh_token"] == "refresh-secret-1"
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.json"]


def test_authorize_without_browser_stores_the_token(
    fake: FakeGmail, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secrets = tmp_path / "client.json"
    secrets.write_text(json.dumps({"installed": {
        "client_id": "cid.apps.googleusercontent.com", "client_secret": "client-secret-xyz",
        "auth_uri": fake.url + "auth", "token_uri": fake.url + "token",
        "redirect_uris": ["http://localhost"]}}))
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the fake speaks plain http
    monkeypatch.setattr(sys, "stdin", io.StringIO("http://localhost:1/?code=good-code\n"))
    token = tmp_path / "dir" / "token.json"
    account = Account("sales-gmail", "gmail", {"client_secrets": str(secrets),
                                               "token_file": str(token)})
    gmail.authorize(account, no_browser=True)
    err = capsys.readouterr().err
    assert fake.url + "auth?" in err
    assert "gmail.readonly" in err
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    info = json.loads(token.read_text())
    assert info["refresh_token"] == "refresh-secret-1"
    assert not any(s in err for s in SECRET_MARKERS)
    monkeypatch.setattr(sys, "stdin", io.StringIO("bad-code\n"))
    with pytest.raises(AuthError, match="Google sign-in failed"):
        gmail.authorize(account, no_browser=True, scope="metadata")


def test_no_token_appears_in_output_or_logs(
    fake: FakeGmail, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    cache, account = synced(tmp_path, fake)
    fake.expire_tokens()
    fake.revoked = True
    with pytest.raises(AuthError) as err:
        gmail.sync(cache, account, CONFIG, full=True)
    assert fake.issued  # tokens were issued...
    assert shown([*fake.issued, *SECRET_MARKERS], capfd, caplog, err.value) == []  # ...unseen


# -- retry helpers ----------------------------------------------------------------------

def test_moving_window_limiter_never_exceeds_its_window() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    lim = MovingWindowLimiter(250, window=1.0, safety=0.96, clock=lambda: now[0], sleep=sleep)
    spent: list[tuple[float, float]] = []
    rng = random.Random(4)
    for _ in range(500):
        cost = rng.choice([10, 20, 60])
        entry = lim.acquire_slot(cost)
        start = now[0]
        now[0] += rng.uniform(0.0, 0.02)  # the request's round trip
        lim.settle(entry)
        spent.append((start, cost))
    # Any one-second window of send times holds at most the budget (240 units).
    for t, _ in spent:
        assert sum(c for s, c in spent if t <= s < t + 1.0) <= 240
    rate = lim.total / now[0]
    assert 0.85 * 250 < rate <= 250


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(1)
    draws = [backoff_delay(a, base=0.5, cap=4.0, rng=rng) for a in range(10) for _ in range(50)]
    assert all(0.0 <= d <= 4.0 for d in draws)
    assert max(backoff_delay(0, base=0.5, rng=rng) for _ in range(100)) <= 0.5
    assert max(draws) > 3.5  # the cap is reached, not exceeded
