"""Microsoft 365 connector: the real msal and requests against a fake identity platform and
Graph on loopback HTTPS (tests/fake_graph.py), trusted through the account's ca_file."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_graph import (  # noqa: E402
    USER,
    FakeMicrosoft,
    Mailbox,
    generate,
    make_client_certificate,
)

from replytime.config import Account, Config, FormRule, LeadFilters  # noqa: E402
from replytime.errors import AuthError, ConfigError, SourceUnreachable  # noqa: E402
from replytime.sources import msauth, msgraph  # noqa: E402
from replytime.store import open_cache  # noqa: E402
from replytime.syncing import sync_accounts  # noqa: E402
from tests.leaks import shown  # noqa: E402

CONFIG = Config(leads=LeadFilters(forms=(FormRule("*", lead_address="header:x-lead-email"),)))
NAME = "sales-ms"
SRC = Path(__file__).resolve().parents[1] / "src"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"  # trusts nothing the fake serves


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeMicrosoft]:
    server = FakeMicrosoft(tmp_path / "certs", seed=7)
    generate(server.box, 150, seed=3)
    server.start()
    yield server
    server.stop()


def account(tmp_path: Path, fake: FakeMicrosoft, name: str = NAME, **options: Any) -> Account:
    opts = fake.account_options(tmp_path / f"{name}.msal.json", **{"page_size": 25, **options})
    return Account(name, "microsoft", opts)


def signed_in(tmp_path: Path, fake: FakeMicrosoft, **options: Any) -> Account:
    acct = account(tmp_path, fake, **options)
    msauth.device_sign_in(acct)
    return acct


def synced(tmp_path: Path, fake: FakeMicrosoft) -> tuple[Any, Account]:
    """A cache after a first sync of the signed-in user's mailbox, and its account."""
    acct = signed_in(tmp_path, fake)
    cache = open_cache(tmp_path / "c.sqlite")
    msgraph.sync(cache, acct, CONFIG)
    return cache, acct


def inbox_ids(box: Mailbox) -> list[str]:
    inbox = box.folder("inbox")
    assert inbox is not None
    return sorted(m.id for m in box.messages.values() if m.folder == inbox.id)


def expected(box: Mailbox, folders: tuple[str, ...] = ("inbox", "sentitems")
             ) -> dict[str, tuple[Any, ...]]:
    """Per location, what the cache must hold, from the fake's own data."""
    out = {}
    for m in box.messages.values():
        folder = box.folders[m.folder]
        if folder.well_known not in folders and folder.name not in folders:
            continue
        p = m.props
        h = dict(m.headers or [])
        irt = m.mapi.get("String 0x1042") or h.get("In-Reply-To")
        refs = m.mapi.get("String 0x1039") or h.get("References", "")
        out[f"{folder.name}/{m.id}"] = (
            p["internetMessageId"].strip("<>"),
            p["from"]["emailAddress"]["address"],
            ",".join(r["emailAddress"]["address"] for r in p["toRecipients"]),
            ",".join(r["emailAddress"]["address"] for r in p["ccRecipients"]),
            p["subject"],
            msgraph._ms(p["receivedDateTime"]),
            irt.strip("<>") if irt else None,
            " ".join(r.strip("<>") for r in refs.split()),
            6 if "List-Id" in h else 0,  # the List-Id marker (model.AUTOMATED_MARKERS)
            p["conversationId"],
            json.dumps({"x-lead-email": h["X-Lead-Email"]}) if "X-Lead-Email" in h else "{}",
            folder.name,
        )
    return out


def cached(cache: Any, name: str = NAME) -> dict[str, tuple[Any, ...]]:
    rows = cache.conn.execute(
        "SELECT l.location, m.message_id, m.from_addr, m.to_addrs, m.cc_addrs, m.subject, "
        "m.time_ms, m.in_reply_to, m.refs, m.automated, m.provider_thread_id, m.extra, l.labels "
        "FROM locations l JOIN messages m ON m.msg_key = l.msg_key WHERE l.account = ?",
        (name,))
    return {r[0]: tuple(r[1:]) for r in rows}


def graph_calls(fake: FakeMicrosoft, mark: int = 0) -> list[str]:
    return [path for kind, path, _ in fake.log[mark:] if kind == "graph"]


# -- first sync, incremental ----------------------------------------------------------------

def test_first_sync_stores_every_message_exactly(fake: FakeMicrosoft, tmp_path: Path) -> None:
    acct = signed_in(tmp_path, fake)
    mark = len(fake.log)
    cache = open_cache(tmp_path / "c.sqlite")
    stats = msgraph.sync(cache, acct, CONFIG)
    want = expected(fake.box)
    assert cached(cache) == want
    assert stats.fetched == len(want) == 150
    sent = sum(1 for k in want if k.startswith("Sent Items/"))
    assert 20 < sent < 80  # both folders, and Sent Items' threading came from MAPI properties
    assert all(v[6] for k, v in want.items() if k.startswith("Sent Items/"))
    calls = graph_calls(fake, mark)
    # Two folder look-ups, then ceil(n / 25) delta pages per folder; no $batch needed.
    pages = -(-(150 - sent) // 25) + -(-sent // 25)
    assert len(calls) == stats.extra["requests"] == 2 + pages
    delta = [c for c in calls if "/delta" in c]
    assert f"$select={msgraph.SELECT}" in delta[0]
    assert "body" not in delta[0].split("$select=")[1].split("&")[0].split(",")
    assert "singleValueExtendedProperties($filter=id eq 'String 0x1042'" in delta[0]
    assert set(fake.prefer) == {"odata.maxpagesize=25"}
    state = cache.account_state(NAME)["folders"]
    assert set(state) == {"inbox", "sentitems"}
    assert all(f["delta"] and not f["next"] for f in state.values())


def test_default_page_size_is_graphs_largest(fake: FakeMicrosoft, tmp_path: Path) -> None:
    acct = signed_in(tmp_path, fake)
    opts = dict(acct.options)
    del opts["page_size"]
    msgraph.sync(open_cache(tmp_path / "c.sqlite"), Account(NAME, "microsoft", opts), CONFIG)
    assert set(fake.prefer) == {"odata.maxpagesize=1000"}
    assert len([c for c in graph_calls(fake) if "/delta" in c]) == 2  # one page per folder


def test_incremental_applies_new_deleted_moved_and_leaves_read_changes(
    fake: FakeMicrosoft, tmp_path: Path
) -> None:
    cache, acct = synced(tmp_path, fake)
    box = fake.box
    inbox = inbox_ids(box)
    fake.add_message(box, "inbox", "Fresh lead")
    fake.delete(box, inbox[0])
    fake.move(box, inbox[1], "archive")  # out of the synced folders
    for mid in inbox[2:6]:
        fake.toggle_read(box, mid)  # answered with id, isRead and parentFolderId only
    mark = len(fake.log)
    stats = msgraph.sync(cache, acct, CONFIG)
    assert (stats.fetched, stats.removed) == (1, 2)
    assert cached(cache) == expected(box)
    calls = graph_calls(fake, mark)
    assert len(calls) == 2 and all("$deltatoken=" in c for c in calls)  # no $batch


def test_nothing_new_costs_one_request_per_folder(fake: FakeMicrosoft, tmp_path: Path) -> None:
    cache, acct = synced(tmp_path, fake)
    mark = len(fake.log)
    stats = msgraph.sync(cache, acct, CONFIG)
    assert stats.fetched == stats.removed == 0
    assert stats.extra["requests"] == 2
    # Besides msal's OIDC discovery document, no sign-in traffic: the cached token is used.
    assert [(k, p.rsplit("/", 1)[-1]) for k, p, _ in fake.log[mark:]] == [
        ("identity", "openid-configuration"), ("graph", p2 := fake.log[-2][1].rsplit("/", 1)[-1]),
        ("graph", fake.log[-1][1].rsplit("/", 1)[-1])]
    assert p2.startswith("delta?$deltatoken=")


def test_changed_row_never_blanks_and_unknown_ones_are_fetched_whole(
    fake: FakeMicrosoft, tmp_path: Path
) -> None:
    cache, acct = synced(tmp_path, fake)
    before = cached(cache)
    box = fake.box
    inbox = sorted(m.id for m in box.messages.values() if m.folder == box.folder("inbox").id)
    # A message the cache lost (a since window that moved, an older cache) then changes:
    # its changed row alone would say nothing, so it is fetched in a $batch.
    lost = f"Inbox/{inbox[7]}"
    cache.write_batch(NAME, [], account_type="microsoft", removed=[lost],
                      state=cache.account_state(NAME))
    fake.toggle_read(box, inbox[7])
    fake.toggle_read(box, inbox[8])
    mark = len(fake.log)
    stats = msgraph.sync(cache, acct, CONFIG)
    assert stats.fetched == 1
    assert cached(cache) == before
    batches = [c for c in graph_calls(fake, mark) if c.startswith("/$batch")]
    assert len(batches) == 1 and fake.batch_parts == 1


def test_sent_items_without_expansion_are_fetched_in_batches_of_20(
    tmp_path: Path
) -> None:
    server = FakeMicrosoft(tmp_path / "certs")
    generate(server.box, 400, seed=5, sent_share=0.5)
    server.delta_ignores_expand = True  # users report $expand ignored on delta pages
    server.latency = 0.02
    server.start()
    try:
        acct = signed_in(tmp_path, server, page_size=100)
        cache = open_cache(tmp_path / "c.sqlite")
        stats = msgraph.sync(cache, acct, CONFIG)
        want = expected(server.box)
        assert cached(cache) == want
        sent = sum(1 for k in want if k.startswith("Sent Items/"))
        assert server.batch_parts == sent  # each Sent Items message once, none from Inbox
        batches = [c for c in graph_calls(server) if c.startswith("/$batch")]
        assert len(batches) == sum(-(-n // 20) for n in _per_page(sent, 100))
        assert stats.extra["requests"] == len(graph_calls(server))
        assert 1 < server.peak <= 4  # batches run in parallel, never more than 4 at once
        assert server.throttled == 0
    finally:
        server.stop()


def _per_page(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def test_expired_delta_link_restarts_the_folder_and_reconciles(
    fake: FakeMicrosoft, tmp_path: Path
) -> None:
    cache, acct = synced(tmp_path, fake)
    box = fake.box
    inbox = inbox_ids(box)
    fake.delete(box, inbox[3])
    fake.add_message(box, "inbox", "After the expiry")
    fake.expire_sync()  # every delta link now answers 410 SyncStateNotFound
    stats = msgraph.sync(cache, acct, CONFIG)
    assert stats.extra["delta_expired"] == 2
    assert stats.removed == 1
    assert cached(cache) == expected(box)
    assert any(s == 410 for _, _, s in fake.log)
    state = cache.account_state(NAME)["folders"]
    assert all(f["delta"] and not f["restart"] for f in state.values())


def test_expired_next_link_mid_round_restarts_that_round(
    fake: FakeMicrosoft, tmp_path: Path
) -> None:
    acct = signed_in(tmp_path, fake, max_attempts=3)
    cache = open_cache(tmp_path / "c.sqlite")
    fake.fail_after = 4  # two folder look-ups, two pages: then an outage
    with pytest.raises(SourceUnreachable):
        msgraph.sync(cache, acct, CONFIG)
    assert cache.account_state(NAME)["folders"]["inbox"]["next"]
    fake.fail_after = None
    fake.expire_sync()
    msgraph.sync(cache, acct, CONFIG)
    assert cached(cache) == expected(fake.box)


def test_folders_by_display_name_and_since(fake: FakeMicrosoft, tmp_path: Path) -> None:
    box = fake.box
    leads = box.add_folder("Web leads")
    moved = inbox_ids(box)
    for mid in moved[:30]:
        box.messages[mid].folder = leads.id
    acct = signed_in(tmp_path, fake, folders=["Web leads", "Inbox"], since="2026-05-28T21:30:00Z")
    cache = open_cache(tmp_path / "c.sqlite")
    msgraph.sync(cache, acct, CONFIG)
    since = msgraph._ms("2026-05-28T21:30:00Z")
    assert since is not None
    want = {k: v for k, v in expected(box, ("Web leads", "inbox")).items() if v[5] >= since}
    assert 0 < len(want) < len(expected(box, ("Web leads", "inbox")))
    assert any(k.startswith("Web leads/") for k in want)
    assert cached(cache) == want
    assert any("displayName eq 'Web leads'" in c for c in graph_calls(fake))
    bad = account(tmp_path, fake, folders=["Nope"])
    with pytest.raises(ConfigError, match=r"accounts\.sales-ms\.folders: .*no folder 'Nope'"):
        msgraph.sync(cache, bad, CONFIG)


# -- faults, throttling, resumption --------------------------------------------------------

@pytest.mark.parametrize("rate", [0.10, 0.30])
def test_faults_still_give_the_exact_cache(tmp_path: Path, rate: float) -> None:
    server = FakeMicrosoft(tmp_path / "certs", seed=int(rate * 100), fault_rate=rate,
                           drop_rate=rate / 3, truncate_rate=rate / 3)
    generate(server.box, 300, seed=9, sent_share=0.4)
    server.delta_ignores_expand = True  # batch parts fail and are retried too
    server.start()
    try:
        acct = account(tmp_path, server, page_size=20, max_attempts=6)
        server.fault_rate = server.drop_rate = server.truncate_rate = 0.0
        msauth.device_sign_in(acct)
        server.fault_rate, server.drop_rate, server.truncate_rate = rate, rate / 3, rate / 3
        cache = open_cache(tmp_path / "c.sqlite")

        def sync_until_done() -> int:
            gave_up = 0
            for _ in range(10):
                try:
                    stats = msgraph.sync(cache, acct, CONFIG)
                    return gave_up + stats.extra["retries"]
                except SourceUnreachable as exc:
                    assert exc.exit_code == 4
                    gave_up += 1
                    want = expected(server.box)
                    assert all(want[k] == v for k, v in cached(cache).items())
            raise AssertionError("the sync never finished")

        assert sync_until_done() > 0
        assert cached(cache) == expected(server.box)
        assert server.faults > 3 and server.dropped > 0 and server.truncated > 0
        for i in range(5):
            server.add_message(server.box, "inbox", f"More {i}")
        server.delete(server.box, sorted(server.box.messages)[10])
        sync_until_done()
        assert cached(cache) == expected(server.box)
    finally:
        server.stop()


def test_retry_after_is_obeyed(fake: FakeMicrosoft, tmp_path: Path) -> None:
    acct = signed_in(tmp_path, fake)
    fake.fault_rate, fake.retry_after, fake.fault_statuses = 0.3, 0.25, (429,)
    cache = open_cache(tmp_path / "c.sqlite")
    stats = msgraph.sync(cache, acct, CONFIG)
    assert cached(cache) == expected(fake.box)
    assert stats.extra["throttled"] > 0 and fake.retry_after_seen
    # Every request after a 429 came no earlier than its Retry-After allowed.
    assert all(came >= allowed - 0.01 for allowed, came in fake.retry_after_seen)


def test_request_budget_paces_the_client_without_429(fake: FakeMicrosoft, tmp_path: Path
                                                     ) -> None:
    acct = signed_in(tmp_path, fake, request_limit=4, request_window=1.0)
    fake.limit, fake.window = 4, 1.0
    started = time.monotonic()
    stats = msgraph.sync(open_cache(tmp_path / "c.sqlite"), acct, CONFIG)
    took = time.monotonic() - started
    assert fake.throttled == 0 and stats.extra["retries"] == 0
    n = stats.extra["requests"]
    assert n == 2 + 7 and took >= (n // 4 - 1) * 1.0  # 4 a second at most


def test_server_throttling_is_waited_out(fake: FakeMicrosoft, tmp_path: Path) -> None:
    acct = signed_in(tmp_path, fake)  # the client's budget: Graph's 10,000 per 10 minutes
    fake.limit, fake.window = 5, 1.0  # the server is stricter
    cache = open_cache(tmp_path / "c.sqlite")
    stats = msgraph.sync(cache, acct, CONFIG)
    assert fake.throttled > 0 and stats.extra["throttled"] == fake.throttled
    assert cached(cache) == expected(fake.box)


def test_permanent_failure_exits_4_and_keeps_what_was_synced(
    fake: FakeMicrosoft, tmp_path: Path
) -> None:
    acct = signed_in(tmp_path, fake, max_attempts=3)
    cache = open_cache(tmp_path / "c.sqlite")
    fake.fail_after = 5  # the Inbox's look-up and four of its pages, then an outage
    with pytest.raises(SourceUnreachable, match="after 3 attempts") as err:
        msgraph.sync(cache, acct, CONFIG)
    assert err.value.exit_code == 4
    kept = cached(cache)
    want = expected(fake.box)
    assert len(kept) == 100 and all(want[k] == v for k, v in kept.items())
    fake.fail_after = None
    msgraph.sync(cache, acct, CONFIG)
    assert cached(cache) == want


def _cli_env(tmp_path: Path, fake: FakeMicrosoft, acct: Account) -> dict[str, str]:
    config = tmp_path / "replytime.toml"
    lines = ['[[leads.forms]]', 'from = "*"', 'lead_address = "header:x-lead-email"', '',
             '[[accounts]]', f'name = "{acct.name}"', 'type = "microsoft"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in acct.options.items()]
    config.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "REPLYTIME_CONFIG": str(config),
           "REPLYTIME_DB": str(tmp_path / "killed.sqlite"),
           # The environment's bundle does not trust the fake: ca_file must win.
           "REQUESTS_CA_BUNDLE": SYSTEM_CA, "CURL_CA_BUNDLE": SYSTEM_CA}
    return env


CLI = "import sys; from replytime.cli import run; sys.argv[0] = 'replytime'; run()"
KILLS = 12


def test_killed_sync_process_resumes_to_the_same_cache(tmp_path: Path) -> None:
    seed = 20261203
    rng = random.Random(seed)
    server = FakeMicrosoft(tmp_path / "certs", seed=seed, fault_rate=0.03)
    generate(server.box, 500, seed=11)
    server.start()
    try:
        acct = signed_in(tmp_path, server, page_size=10)
        reference = open_cache(tmp_path / "ref.sqlite")
        msgraph.sync(reference, Account("ref", "microsoft", acct.options), CONFIG)
        env = _cli_env(tmp_path, server, acct)
        kills = finished_first = 0
        while kills < KILLS:
            assert finished_first < KILLS, "the sync kept finishing before the kill"
            mark = server.graph_requests
            proc = subprocess.Popen([sys.executable, "-c", CLI, "sync", NAME], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            target = mark + rng.randint(1, 8)
            deadline = time.monotonic() + 60
            while server.graph_requests < target and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.001)
            if proc.poll() is not None:
                finished_first += 1
                assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
                continue
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        killed = open_cache(tmp_path / "killed.sqlite")
        assert 0 < len(cached(killed)) < 500, seed
        done = subprocess.run([sys.executable, "-c", CLI, "sync", NAME], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        killed = open_cache(tmp_path / "killed.sqlite")
        assert cached(killed) == expected(server.box)
        assert cached(killed) == cached(reference, "ref")  # as the uninterrupted sync
    finally:
        server.stop()


# -- credentials ----------------------------------------------------------------------------

def test_device_sign_in_prints_the_code_and_stores_a_0600_cache(
    fake: FakeMicrosoft, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acct = account(tmp_path, fake, token_cache=str(tmp_path / "new" / "dir" / "c.json"))
    fake.approve_device = False
    # The user has not entered the code yet: msal polls; approve after the first poll.

    def approve() -> None:
        time.sleep(0.3)
        fake.approve_device = True

    import threading

    threading.Thread(target=approve).start()
    assert msauth.device_sign_in(acct) == USER
    err = capsys.readouterr().err
    assert "https://microsoft.com/devicelogin" in err and "ABCD-EFGH" in err
    path = tmp_path / "new" / "dir" / "c.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    cache = json.loads(path.read_text())
    assert list(cache["RefreshToken"].values())[0]["secret"] in fake.refresh
    granted = [i["scope"] for i in fake.access.values()]
    assert granted == [f"{fake.url}/Mail.Read"]
    assert not any(s in err for s in fake.issued)


def test_token_refresh_is_silent_and_saved_back(fake: FakeMicrosoft, tmp_path: Path) -> None:
    acct = signed_in(tmp_path, fake)
    path = Path(acct.options["token_cache"])
    first_rt = json.loads(path.read_text())["RefreshToken"]
    cache = open_cache(tmp_path / "c.sqlite")
    stats = msgraph.sync(cache, acct, CONFIG)
    assert fake.refreshes == 0 and stats.extra["token_refreshes"] == 0  # cached token used
    fake.expire_tokens()  # Graph refuses the cached access token: refreshed on the 401
    fake.add_message(fake.box, "inbox", "Needs a fresh token")
    stats = msgraph.sync(cache, acct, CONFIG)
    assert stats.fetched == 1 and fake.refreshes == 1 and stats.extra["token_refreshes"] == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["RefreshToken"] != first_rt  # the rotated refresh token was kept
    assert list(saved["RefreshToken"].values())[0]["secret"] in fake.refresh
    # An access token close to expiry is refreshed before use, without a 401.
    fake.expires_in = 60
    fake.expire_tokens()
    msgraph.sync(cache, acct, CONFIG)
    mark = len(fake.log)
    msgraph.sync(cache, acct, CONFIG)
    assert [(k, p.split("/")[-1].split("?")[0], s) for k, p, s in fake.log[mark:]] == [
        ("identity", "openid-configuration", 200), ("identity", "token", 200),
        ("graph", "delta", 200), ("graph", "delta", 200)]


def test_revoked_token_is_an_auth_error_exit_3(fake: FakeMicrosoft, tmp_path: Path) -> None:
    acct = signed_in(tmp_path, fake)
    cache = open_cache(tmp_path / "c.sqlite")
    fake.revoked = True
    fake.expire_tokens()
    with pytest.raises(AuthError, match=r"no longer valid \(invalid_grant AADSTS70000\): "
                       r"run `replytime auth sales-ms`") as err:
        msgraph.sync(cache, acct, CONFIG)
    assert err.value.exit_code == 3


def test_revoked_token_through_the_cli_leaks_no_token(fake: FakeMicrosoft, tmp_path: Path
                                                      ) -> None:
    acct = signed_in(tmp_path, fake)
    env = _cli_env(tmp_path, fake, acct)
    ok = subprocess.run([sys.executable, "-c", CLI, "--debug", "sync", NAME], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    fake.revoked = True
    fake.expire_tokens()
    bad = subprocess.run([sys.executable, "-c", CLI, "--debug", "sync", NAME], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 3
    assert "Traceback" in bad.stderr  # --debug shows it...
    assert bad.stderr.strip().splitlines()[-1] == (
        f"replytime: error: {NAME}: Microsoft sign-in for {NAME} is no longer valid "
        f"(invalid_grant AADSTS70000): run `replytime auth {NAME}`")
    text = ok.stdout + ok.stderr + bad.stdout + bad.stderr
    assert fake.issued and not any(s in text for s in fake.issued)  # ...but never a token


def test_token_cache_readable_by_others_is_refused(fake: FakeMicrosoft, tmp_path: Path) -> None:
    acct = signed_in(tmp_path, fake)
    path = Path(acct.options["token_cache"])
    path.chmod(0o640)
    mark = len(fake.log)
    with pytest.raises(AuthError, match=r"readable by other users \(mode 640\).*chmod 600"):
        msgraph.sync(open_cache(tmp_path / "c.sqlite"), acct, CONFIG)
    assert fake.log[mark:] == []
    path.unlink()
    with pytest.raises(AuthError, match=r"no Microsoft sign-in at .*run `replytime auth "
                       r"sales-ms`"):
        msgraph.sync(open_cache(tmp_path / "c.sqlite"), acct, CONFIG)


def test_save_cache_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    import msal

    cache = msal.SerializableTokenCache()
    old = os.umask(0)
    try:
        target = tmp_path / "sub" / "t.json"
        msauth.save_cache(cache, target)
        msauth.save_cache(cache, target)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.json"]


def test_no_token_in_output_or_debug_logs(
    fake: FakeMicrosoft, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    cache, acct = synced(tmp_path, fake)
    fake.expire_tokens()
    msgraph.sync(cache, acct, CONFIG)  # a refresh
    fake.expire_tokens()
    fake.revoked = True
    with pytest.raises(AuthError) as err:
        msgraph.sync(cache, acct, CONFIG)
    assert len(caplog.records) > 10  # msal, urllib3 and requests did log at DEBUG
    assert len(fake.issued) >= 4
    assert shown(fake.issued, capfd, caplog, err.value) == []


def test_ca_file_wins_over_the_environment(fake: FakeMicrosoft, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_CA)
    monkeypatch.setenv("CURL_CA_BUNDLE", SYSTEM_CA)
    acct = signed_in(tmp_path, fake)
    msgraph.sync(open_cache(tmp_path / "c.sqlite"), acct, CONFIG)
    opts = {k: v for k, v in acct.options.items() if k != "ca_file"}
    with pytest.raises(SourceUnreachable, match="SSLError") as err:
        msgraph.sync(open_cache(tmp_path / "d.sqlite"), Account(NAME, "microsoft", opts),
                     CONFIG)
    assert err.value.exit_code == 4


# -- app-only and shared mailboxes ----------------------------------------------------------

def test_app_only_with_a_client_secret(fake: FakeMicrosoft, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    other = fake.mailbox("bob@acme.example")
    generate(other, 60, seed=21)
    fake.client_secret = "app-secret-value-123"
    monkeypatch.setenv("MS_SECRET", fake.client_secret)
    acct = account(tmp_path, fake, client_secret_env="MS_SECRET", mailbox="bob@acme.example",
                   tenant="acme.example")
    cache = open_cache(tmp_path / "c.sqlite")
    msgraph.sync(cache, acct, CONFIG)
    assert cached(cache) == expected(other)
    assert not Path(acct.options["token_cache"]).exists()  # nothing of the app's on disk
    assert all(c.startswith("/users/bob@acme.example/") for c in graph_calls(fake))
    assert [i["scope"] for i in fake.access.values()] == [f"{fake.url}/.default"]
    # The tenant's application access policy leaves bob out: a one-line auth error.
    fake.app_allowed = {"alice@acme.example"}
    fake.expire_tokens()
    with pytest.raises(AuthError, match="application access policy") as err:
        msgraph.sync(open_cache(tmp_path / "d.sqlite"), acct, CONFIG)
    assert err.value.exit_code == 3
    fake.client_secret = "rotated"
    with pytest.raises(AuthError, match=r"refused the app's credentials \(invalid_client "
                       r"AADSTS7000215\)"):
        msgraph.sync(open_cache(tmp_path / "e.sqlite"), acct, CONFIG)


def test_app_only_with_a_certificate(fake: FakeMicrosoft, tmp_path: Path) -> None:
    other = fake.mailbox("bob@acme.example")
    generate(other, 40, seed=22)
    cert, key = make_client_certificate(tmp_path)
    fake.client_cert = cert
    acct = account(tmp_path, fake, client_certificate=str(cert), tenant="acme.example",
                   client_certificate_key=str(key), mailbox="bob@acme.example")
    cache = open_cache(tmp_path / "c.sqlite")
    msgraph.sync(cache, acct, CONFIG)
    assert cached(cache) == expected(other)
    assert fake.token_grants == 1  # one client-credentials grant, its assertion verified


def test_delegated_shared_mailbox(fake: FakeMicrosoft, tmp_path: Path) -> None:
    shared = fake.mailbox("sales@acme.example")
    generate(shared, 50, seed=23)
    acct = signed_in(tmp_path, fake, mailbox="sales@acme.example")
    assert [i["scope"] for i in fake.access.values()] == [f"{fake.url}/Mail.Read.Shared"]
    with pytest.raises(AuthError, match="denied access to sales@acme.example"):
        msgraph.sync(open_cache(tmp_path / "c.sqlite"), acct, CONFIG)
    fake.shared_with_user.add("sales@acme.example")
    cache = open_cache(tmp_path / "d.sqlite")
    msgraph.sync(cache, acct, CONFIG)
    assert cached(cache) == expected(shared)


def test_sync_all_runs_mailboxes_in_parallel(fake: FakeMicrosoft, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    other = fake.mailbox("bob@acme.example")
    generate(other, 80, seed=24)
    fake.client_secret = "app-secret-value-123"
    monkeypatch.setenv("MS_SECRET", fake.client_secret)
    rep = signed_in(tmp_path, fake)
    bob = account(tmp_path, fake, name="bob", client_secret_env="MS_SECRET",
                  mailbox="bob@acme.example", tenant="acme.example")
    db = tmp_path / "all.sqlite"
    lines: list[str] = []
    report = sync_accounts(db, [rep, bob], CONFIG, progress=False, echo=lines.append)
    assert report.exit_code == 0
    cache = open_cache(db)
    assert cached(cache, NAME) == expected(fake.box)
    assert cached(cache, "bob") == expected(other)
    assert sorted(line.split(":")[0] for line in lines) == ["bob", NAME]


# -- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "key"), [
    ({"client_id": ""}, "client_id"),
    ({"tenant": "a/b"}, "tenant"),
    ({"authority_host": "http://127.0.0.1:1"}, "authority_host"),
    ({"graph_endpoint": "graph.microsoft.com"}, "graph_endpoint"),
    ({"ca_file": "/nonexistent/ca.pem"}, "ca_file"),
    ({"folders": []}, "folders"),
    ({"since": "last tuesday"}, "since"),
    ({"scope": "all"}, "scope"),
    ({"page_size": 0}, "page_size"),
    ({"client_secret_env": "REPLYTIME_TEST_UNSET_VAR"}, "client_secret_env"),
    ({"client_secret_file": "/nonexistent"}, "client_secret_file"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(
    fake: FakeMicrosoft, tmp_path: Path, options: dict[str, Any], key: str
) -> None:
    acct = signed_in(tmp_path, fake)
    bad = Account(NAME, "microsoft", {**acct.options, **options})
    mark = len(fake.log)
    with pytest.raises(ConfigError) as err:
        msgraph.sync(open_cache(tmp_path / "c.sqlite"), bad, CONFIG)
    assert str(err.value).startswith(f"config: accounts.{NAME}.{key}: ")
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    assert fake.log[mark:] == []


def test_app_only_needs_a_mailbox(fake: FakeMicrosoft, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MS_SECRET", "x")
    acct = account(tmp_path, fake, client_secret_env="MS_SECRET")
    with pytest.raises(ConfigError, match=r"accounts\.sales-ms\.tenant: app-only"):
        msgraph.sync(open_cache(tmp_path / "c.sqlite"), acct, CONFIG)
    acct = account(tmp_path, fake, client_secret_env="MS_SECRET", tenant="acme.example")
    with pytest.raises(ConfigError, match=r"accounts\.sales-ms\.mailbox: app-only"):
        msgraph.sync(open_cache(tmp_path / "c.sqlite"), acct, CONFIG)
    with pytest.raises(ConfigError, match="no one to sign in"):
        msauth.device_sign_in(Account(NAME, "microsoft", {**acct.options, "mailbox": "b@x.y"}))


# -- the command line ----------------------------------------------------------------------

def test_auth_account_dispatches_on_its_type(fake: FakeMicrosoft, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from replytime.cli import main

    acct = account(tmp_path, fake)
    env = _cli_env(tmp_path, fake, acct)
    config = env["REPLYTIME_CONFIG"]
    assert main(["--config", config, "auth", NAME]) == 0
    err = capsys.readouterr().err
    assert "enter the code ABCD-EFGH" in err and f"authorised {NAME} as {USER}" in err
    assert stat.S_IMODE(Path(acct.options["token_cache"]).stat().st_mode) == 0o600
    assert main(["--config", config, "auth", "gmail", NAME]) == 2
    assert "is of type microsoft, not gmail" in capsys.readouterr().err
    db = str(tmp_path / "cli.sqlite")
    assert main(["--config", config, "--db", db, "sync", NAME]) == 0, capsys.readouterr().err


# -- IMAP with Microsoft OAuth -------------------------------------------------------------

def test_imap_with_microsoft_oauth_logs_in_to_dovecot_with_xoauth2(
    fake: FakeMicrosoft, tmp_path: Path
) -> None:
    """Real Dovecot whose oauth2 passdb asks the fake identity platform whether the token
    is active (as Exchange Online does), the real msal getting the token."""
    from dovecot import Dovecot
    from test_imap import BASE, lead

    from replytime.sources import imap

    d = Dovecot(tmp_path / "dovecot", oauth2_introspection=(f"{fake.url}/introspect", fake.ca))
    d.start()
    try:
        for i in range(5):
            d.add("INBOX", lead(i), BASE + 60 * i)
        opts = {k: v for k, v in d.account_options().items() if k != "password_env"}
        ms = fake.account_options(tmp_path / "imap.msal.json")
        acct = Account("ms-imap", "imap", {**opts, "oauth": "microsoft", **{
            k: ms[k] for k in ("client_id", "tenant", "token_cache", "authority_host",
                               "ca_file")}})
        msauth.device_sign_in(acct)
        assert [i["scope"] for i in fake.access.values()] == [msauth.IMAP_SCOPE]
        cache = open_cache(tmp_path / "c.sqlite")
        stats = imap.sync(cache, acct, CONFIG)
        assert stats.fetched == 5 and fake.imap_logins >= 1
        # A revoked sign-in: the expired token cannot be refreshed, exit 3.
        fake.expire_tokens()
        fake.revoked = True
        with pytest.raises(AuthError, match=r"run `replytime auth ms-imap`") as err:
            imap.sync(cache, acct, CONFIG)
        assert err.value.exit_code == 3
        # A token Dovecot (Exchange) calls inactive: the login is refused, one line.
        fake.revoked = False
        fake.access.clear()
        cache_file = Path(ms["token_cache"])
        cache_file.unlink()
        msauth.device_sign_in(acct)
        fake.access.clear()  # msal still holds the token; the server no longer accepts it
        with pytest.raises(AuthError, match="refused the XOAUTH2 token for rep@acme.example"):
            imap.sync(cache, acct, CONFIG)
    finally:
        d.stop()
    with pytest.raises(ConfigError, match=r"accounts\.x\.oauth: must be \"microsoft\""):
        imap.Settings.from_account(Account("x", "imap", {**opts, "oauth": "google"}))
    assert imap.Settings.from_account(Account("x", "imap", {"username": "a@b.c",
                                                            "oauth": "microsoft"})
                                      ).where == "outlook.office365.com:993"


def test_the_templates_microsoft_account_is_valid_as_written() -> None:
    import tomllib

    from replytime.config import TEMPLATE, parse_config

    block = TEMPLATE[TEMPLATE.index('# name = "sales-m365"') - len("# [[accounts]]\n"):]
    keep = ("[[accounts]]", "name", "type", "client_id", "tenant", "token_cache", "mailbox",
            "folders", "since", "scope")
    lines = [line[2:] for line in block.splitlines()
             if line.startswith("# ") and line[2:].split(" ")[0] in keep]
    config = parse_config(tomllib.loads("\n".join(lines)))
    (acct,) = config.accounts
    s = msauth.settings(acct)
    assert (acct.type, s.tenant, s.mailbox, s.scope) == ("microsoft", "organizations", "me",
                                                         "read")
    assert msgraph._since(acct.options["since"], "since") == msgraph._ms("2026-01-01T00:00:00Z")


def test_pinned_session_keeps_its_verify_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import requests

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_CA)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    session = msauth.PinnedSession(str(tmp_path / "ca.pem"))
    settings = session.merge_environment_settings("https://graph.microsoft.com/", {}, None,
                                                  None, None)
    assert settings["verify"] == str(tmp_path / "ca.pem")
    assert settings["proxies"]["https"] == "http://proxy.invalid:3128"  # proxies still work
    plain = requests.Session()
    assert plain.merge_environment_settings("https://x/", {}, None, None, None)[
        "verify"] == SYSTEM_CA  # what a plain session would have done
