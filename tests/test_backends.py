"""The same commands on both cache backends (SQLite file, real PostgreSQL server), through
the real console script: identical reports, concurrent writers of different accounts,
the per-account lock, and parallel IMAP syncs against real Dovecot servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from replytime.api import Analysis
from replytime.config import load_config
from replytime.store import SCHEMA_VERSION, open_cache
from replytime.store.postgres import MIGRATIONS as PG_MIGRATIONS
from replytime.store.postgres import glob_regex, redact
from replytime.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from tests.dovecot import Dovecot, free_port
from tests.pg import PostgresServer

SCRIPT = Path(sys.executable).with_name("replytime")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MBOX, CONFIG = EXAMPLES / "mailbox.mbox", EXAMPLES / "replytime.toml"
AS_OF = "2026-11-06T21:00:00+00:00"
PASSWORD_ENV = "REPLYTIME_TEST_IMAP_PASSWORD"
BASE = 1793610000  # 2026-11-02 09:40 UTC


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    full_env.update({"NO_COLOR": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    full_env.update({"NO_COLOR": "1", **(env or {})})
    return subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env)


def split_mbox(tmp: Path, limit: int | None = None) -> tuple[Path, Path, int]:
    """The example mailbox (its first ``limit`` messages) as two mbox files of alternate
    messages; returns both and the number of messages."""
    data = MBOX.read_bytes()
    parts = data.split(b"\nFrom ")
    messages = [parts[0] + b"\n"] + [b"From " + p + b"\n" for p in parts[1:]]
    messages = messages[:limit]
    halves = (tmp / "even.mbox", tmp / "odd.mbox")
    halves[0].write_bytes(b"".join(messages[0::2]))
    halves[1].write_bytes(b"".join(messages[1::2]))
    return halves[0], halves[1], len(messages)


# -- the same schema and the same answers ---------------------------------------------------
def test_migrations_are_numbered_alike() -> None:
    assert len(PG_MIGRATIONS) == len(SQLITE_MIGRATIONS)


def test_same_tables_columns_and_indexes(tmp_path: Path, pg_server: PostgresServer) -> None:
    lite = open_cache(tmp_path / "c.sqlite")
    pg = open_cache(pg_server.create_database())
    tables = ["accounts", "alerts", "files", "lead_blocks", "leads", "locations",
              "message_volume", "messages", "meta", "schema_version", "skipped",
              "thread_keys", "thread_links", "threads"]
    lite_tables = sorted(r[0] for r in lite.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"))
    pg_tables = sorted(r[0] for r in pg.conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"))
    assert lite_tables == pg_tables == tables
    for t in tables:
        lite_cols = [(r[1], bool(r[3]) or bool(r[5])) for r in lite.conn.execute(
            "SELECT * FROM pragma_table_info(?) ORDER BY cid", (t,))]
        pg_cols = [(r[0], r[1] == "NO") for r in pg.conn.execute(
            "SELECT column_name, is_nullable FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position", (t,))]
        assert lite_cols == pg_cols, t
    lite_idx = {r[0] for r in lite.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    pg_idx = {r[0] for r in pg.conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
        "AND indexname NOT LIKE '%%_pkey' AND indexname NOT LIKE '%%_key'")}
    assert lite_idx == pg_idx == {"messages_time", "messages_thread", "locations_msg",
                                  "threads_span", "threads_start", "leads_time",
                                  "leads_reply_time", "leads_thread", "messages_problems",
                                  "lead_blocks_thread", "thread_keys_thread",
                                  "leads_responder", "lead_blocks_responder"}


def test_example_mailbox_gives_identical_reports(tmp_path: Path,
                                                 pg_server: PostgresServer) -> None:
    lite = str(tmp_path / "cache.sqlite")
    pg = pg_server.create_database()
    outputs: dict[str, dict[str, str]] = {}
    for db in (lite, pg):
        r = run("--config", str(CONFIG), "--db", db, "import", str(MBOX), "--account", "example")
        assert r.returncode == 0, r.stderr
        assert r.stderr.startswith("imported 898 messages (0 skipped) from 1 path(s) in ")
        out = {}
        for kind, fmt in (("reps", "csv"), ("leads", "csv"), ("weekly", "json")):
            rep = run("--config", str(CONFIG), "--db", db, "report", kind, "--format", fmt,
                      "--as-of", AS_OF)
            assert rep.returncode == 0, rep.stderr
            out[kind] = rep.stdout
        status = run("--config", str(CONFIG), "--db", db, "status", "--format", "json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info.pop("cache") == (db if db == pg else str(Path(db)))
        for a in info["accounts"]:
            a.pop("last_sync")
        out["status"] = json.dumps(info, sort_keys=True)
        outputs[db] = out
    assert outputs[lite] == outputs[pg]
    assert outputs[pg]["leads"].count("\n") == 153  # header + the 152 example leads
    assert json.loads(outputs[pg]["status"])["messages"] == 898

    # The frames the matcher and metrics read are equal, not only the rendered reports.
    cfg = load_config(CONFIG)
    a, b = open_cache(lite, create=False), open_cache(pg, create=False)
    pd.testing.assert_frame_equal(a.thread_inputs(), b.thread_inputs())
    for kw in ({}, {"labels": True}, {"active": (1793000000000, 1793600000000)}):
        pd.testing.assert_frame_equal(a.messages(**kw), b.messages(**kw))  # type: ignore
    globs = [r.from_glob for r in cfg.leads.forms]
    assert globs
    forms = a.form_notifications(globs, since_ms=0, until_ms=2**62)
    assert len(forms) > 0
    pd.testing.assert_frame_equal(
        forms, b.form_notifications(globs, since_ms=0, until_ms=2**62))
    sa, sb = a.status(), b.status()
    for s in (sa, sb):
        s["accounts"][0].pop("last_sync")
    assert sa == sb
    pd.testing.assert_frame_equal(Analysis(a, cfg, as_of=AS_OF).all_leads,
                                  Analysis(b, cfg, as_of=AS_OF).all_leads)


def test_globs_select_the_same_senders(tmp_path: Path, pg_server: PostgresServer) -> None:
    lite = open_cache(tmp_path / "c.sqlite")
    pg = open_cache(pg_server.create_database())
    senders = ["wordpress@acme.example", "WordPress@acme.example", "noreply@forms.example",
               "a.b@x.example", "axb@x.example", "]z", "x[", "bob@acme.example", "c@d", ""]
    globs = ["*@forms.example", "wordpress@acme.example", "a.b@*", "[ab]?b@*", "[^w]*@acme*",
             "[]]z", "x[", "*", "c@?"]
    for g in globs:
        want = [s for s in senders
                if lite.conn.execute("SELECT ? GLOB ?", (s, g)).fetchone()[0]]
        regex = glob_regex(g)
        got = [s for s in senders if regex is not None
               and pg.conn.execute("SELECT %s ~ %s", (s, regex)).fetchone()[0]]
        assert got == want, g
    assert glob_regex("x[") is None


def test_url_password_is_never_shown(tmp_path: Path, pg_server: PostgresServer) -> None:
    url = pg_server.create_database()
    secret = url.replace("replytime@", "replytime:hunter2%40x@") + "?password=hunter3"
    assert redact(secret) == url
    small, _, _ = split_mbox(tmp_path, limit=10)
    r = run("--config", str(CONFIG), "--db", secret, "import", str(small))
    assert r.returncode == 0, r.stderr
    r = run("--config", str(CONFIG), "--db", secret, "status")
    assert r.returncode == 0 and f"cache        {url} (schema {SCHEMA_VERSION})" in r.stdout
    assert "hunter" not in r.stdout + r.stderr
    closed = f"postgresql://replytime:hunter2@127.0.0.1:{free_port()}/x"
    r = run("--config", str(CONFIG), "--db", closed, "status")
    assert r.returncode == 2
    assert r.stderr.startswith(
        f"replytime: error: cannot connect to the PostgreSQL cache {redact(closed)}: ")
    assert "hunter" not in r.stderr and r.stderr.count("\n") == 1
    r = run("--config", str(CONFIG), "--db", pg_server.create_database(), "status")
    assert r.returncode == 2
    assert "no replytime cache in postgresql://replytime@127.0.0.1:" in r.stderr


def test_nul_in_a_record_is_stored(pg_server: PostgresServer) -> None:
    """PostgreSQL text cannot hold NUL (SQLite can): it becomes U+FFFD there."""
    from dataclasses import replace

    from replytime.sources.headers import parse_header_block

    c = open_cache(pg_server.create_database())
    rec = parse_header_block(b"From: a@b.example\r\nSubject: x\r\nMessage-ID: <n@b>\r\n\r\n")
    c.write_batch("files", [("/n", replace(rec, subject="x\x00y"))])
    assert c.conn.execute("SELECT subject FROM messages").fetchone()[0] == "x\ufffdy"


def test_frames_read_in_chunks_equal_one_read(backend: str) -> None:
    """Frames are read a chunk at a time (memory flat in the result's size): a 7-row chunk
    size gives the very frames of one read, on both backends."""
    from replytime.sources.files import import_paths

    c = open_cache(backend)
    import_paths(c, [MBOX], account="example")
    whole = c.messages()
    inputs = c.thread_inputs()
    c.frame_chunk = 7
    pd.testing.assert_frame_equal(c.messages(), whole)
    pd.testing.assert_frame_equal(c.thread_inputs(), inputs)
    assert len(whole) == 898


def test_copied_frames_equal_streamed_ones(pg_server: PostgresServer) -> None:
    """PostgreSQL frames come from one COPY parsed by Arrow: for every kept-table and
    message read, and values that CSV could confuse (NULL against "" and "NULL", quotes,
    commas, new lines, NaN), the very frame of the row stream (dtypes, values and their
    Python types, index), whatever the chunk size; where a chunk's column would be all
    NULL, the stream reads it instead."""
    import tomllib

    from replytime.config import parse_config
    from replytime.sources.files import import_paths
    from replytime.store.postgres import PostgresCache

    c = open_cache(pg_server.create_database())
    assert isinstance(c, PostgresCache)
    import_paths(c, [MBOX], account="example")
    data = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    data["leads"].pop("forms")  # form rules are never kept
    assert Analysis(c, parse_config(data), as_of=AS_OF).kept
    seen: dict[str, Any] = {}
    read = c._frame

    def recording(sql: str, params: Any = ()) -> pd.DataFrame:
        seen.setdefault(sql, params)
        return read(sql, params)

    c._frame = recording  # type: ignore[method-assign]
    table = c._copied_table

    def recording_table(sql: str, params: Any = ()) -> Any:  # the kept leads' own read
        seen.setdefault(sql, params)
        return table(sql, params)

    c._copied_table = recording_table  # type: ignore[method-assign]
    c.kept_leads(None, None, 2**53)
    c.kept_leads(BASE * 1000, (BASE + 86400 * 3) * 1000, 2**53, replied=True)
    c.kept_blocks(0, 2**53, 2**53)
    c.kept_thread_sizes(0, 2**53)
    c.kept_volume(None, None)
    c.messages()
    c.timed_messages([(0, 2**50)])
    c.thread_inputs()
    del c._frame, c._copied_table
    odd = ("SELECT 1 AS a, CAST(NULL AS BIGINT) AS b, 'NULL' AS c, '' AS d, "
           "'x,\"y\"' || chr(10) || ' z' AS e, CAST(1.5 AS REAL) AS f, true AS g, "
           "CAST('NaN' AS DOUBLE PRECISION) AS h, CAST(NULL AS TEXT) AS i")
    queries = [*seen.items(), (odd, ()), ("SELECT * FROM leads WHERE lead_id < 0", ())]
    assert len(queries) == 10
    fallbacks = 0
    for chunk in (100_000, 7):
        c.frame_chunk = chunk
        for sql, params in queries:
            streamed = c._streamed_frame(sql, params)
            copied = c._copied_frame(sql, params)
            if copied is None:  # only where a column is all NULL in some chunk
                assert chunk == 7
                fallbacks += 1
                copied = c._frame(sql, params)
            pd.testing.assert_frame_equal(copied, streamed, check_exact=True)
            assert type(copied.index) is type(streamed.index)
            for col in [c for c in streamed.columns if streamed[c].dtype.kind == "O"]:
                assert list(map(type, copied[col])) == list(map(type, streamed[col])), col
    assert 0 < fallbacks < len(queries)


def test_status_counts_exactly(backend: str) -> None:
    """status counts from indexes (schema 8): malformed headers (any problem but a missing
    time), messages without a time, and each account's distinct messages, however many
    places hold a message."""
    from dataclasses import replace

    from replytime.model import PROBLEM_BAD_ADDRESS, PROBLEM_MALFORMED, PROBLEM_NO_TIME
    from replytime.sources.headers import parse_header_block

    def rec(i: int, problems: int = 0, timed: bool = True):  # type: ignore[no-untyped-def]
        r = parse_header_block(f"From: a@b.example\r\nSubject: s{i}\r\nMessage-ID: <{i}@b>"
                               "\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\n".encode())
        return replace(r, problems=problems, time_ms=r.time_ms if timed else None)

    c = open_cache(backend)
    c.write_batch("one", [("/1", rec(1)), ("/1-copy", rec(1)), ("/2", rec(2, PROBLEM_NO_TIME,
                                                                          timed=False)),
                          ("/3", rec(3, PROBLEM_MALFORMED | PROBLEM_NO_TIME, timed=False)),
                          ("/4", rec(4, PROBLEM_BAD_ADDRESS))])
    c.write_batch("two", [("a", rec(1)), ("b", rec(5)), ("c", rec(5))])
    c.write_batch("one", [], removed=["/4"])
    s = c.status()
    assert (s["messages"], s["no_time"], s["malformed"]) == (4, 2, 1)
    assert [(a["name"], a["messages"]) for a in s["accounts"]] == [("one", 3), ("two", 2)]


# -- concurrent writers ---------------------------------------------------------------------
def test_concurrent_imports_of_two_accounts(backend: str, tmp_path: Path) -> None:
    even, odd, total = split_mbox(tmp_path)
    procs = [start("--debug", "--config", str(CONFIG), "--db", backend, "import", str(p),
                   "--account", name) for p, name in ((even, "even"), (odd, "odd"))]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    c = open_cache(backend, create=False)
    assert c.message_count() == total == 898
    assert {a["name"]: a["messages"] for a in c.status()["accounts"]} == {
        "even": 449, "odd": 449}
    assert not c.has_unthreaded()
    # Threads as after one import of the whole mailbox (README, `status`).
    assert c.status()["threads"] == 335
    assert c.conn.execute("SELECT count(*), sum(messages) FROM threads").fetchone() == (
        335, 898)


def test_same_account_twice_is_refused(backend: str, tmp_path: Path) -> None:
    even, odd, _ = split_mbox(tmp_path, limit=40)
    holder = open_cache(backend)
    with holder.lock_account("even"):
        r = run("--config", str(CONFIG), "--db", backend, "import", str(even), "--account",
                "even")
        assert r.returncode == 1
        assert r.stderr == (
            f"replytime: error: account 'even' is being imported or synced into {holder.where} "
            "by another replytime process; try again when it has finished\n"
        )
        # Another account is not held up by it.
        r = run("--config", str(CONFIG), "--db", backend, "import", str(odd), "--account", "odd")
        assert r.returncode == 0, r.stderr
    assert holder.message_count() == 20
    r = run("--config", str(CONFIG), "--db", backend, "import", str(even), "--account", "even")
    assert r.returncode == 0, r.stderr
    assert holder.message_count() == 40


# -- parallel sync --------------------------------------------------------------------------
def mail(user: str, i: int) -> bytes:
    return (
        f"From: Lead {i} <lead{i}@prospect.example>\r\n"
        f"To: {user}\r\n"
        f"Subject: Question {i} to {user}\r\n"
        f"Date: Mon, 2 Nov 2026 09:{i:02d}:00 -0500\r\n"
        f"Message-ID: <{user.split('@')[0]}-{i}@prospect.example>\r\n"
        f"\r\nHello\r\n"
    ).encode()


@pytest.fixture
def dovecots(tmp_path: Path) -> Iterator[list[Dovecot]]:
    servers = []
    try:
        for name in ("alpha", "beta"):
            d = Dovecot(tmp_path / name, user=f"{name}@acme.example").start()
            servers.append(d)
            for i in range(12 if name == "alpha" else 7):
                d.add("INBOX", mail(d.user, i), BASE + 60 * i)
            # One message in both mailboxes: stored once, with a location in each account.
            d.add("INBOX", mail("shared@acme.example", 0), BASE)
        yield servers
    finally:
        for d in servers:
            d.stop()


def sync_config(tmp_path: Path, servers: list[Dovecot], dead_port: int | None) -> Path:
    text = ('[team]\ninternal_domains = ["acme.example"]\ntimezone = "UTC"\n'
            '[[reps]]\nname = "Alice"\nemails = ["alice@acme.example"]\n')
    ports = [("alpha", servers[0]), ("beta", servers[1])]
    for name, d in ports:
        text += (f'[[accounts]]\nname = "{name}"\ntype = "imap"\nhost = "127.0.0.1"\n'
                 f'port = {d.port}\nsecurity = "none"\nusername = "{d.user}"\n'
                 f'password_env = "{PASSWORD_ENV}"\n')
    if dead_port is not None:
        text += (f'[[accounts]]\nname = "gamma"\ntype = "imap"\nhost = "127.0.0.1"\n'
                 f'port = {dead_port}\nsecurity = "none"\nusername = "g@acme.example"\n'
                 f'password_env = "{PASSWORD_ENV}"\nretries = 1\nretry_delay = 0.01\n')
    path = tmp_path / "sync.toml"
    path.write_text(text)
    return path


def test_parallel_sync_of_imap_accounts(backend: str, tmp_path: Path,
                                        dovecots: list[Dovecot]) -> None:
    dead = free_port()  # nothing listens there
    cfg = sync_config(tmp_path, dovecots, dead)
    env = {PASSWORD_ENV: dovecots[0].password}
    started = time.monotonic()
    r = run("--config", str(cfg), "--db", backend, "sync", "--jobs", "3", env=env)
    assert time.monotonic() - started < 30
    assert r.returncode == 4, r.stderr
    lines = sorted(r.stderr.splitlines())
    assert len(lines) == 3, r.stderr
    assert lines[0].startswith("alpha: 13 messages fetched, 0 removed, 0 skipped in ")
    assert lines[1].startswith("beta: 8 messages fetched, 0 removed, 0 skipped in ")
    assert lines[2] == (
        f"replytime: error: gamma: IMAP server 127.0.0.1:{dead} unreachable after 1 retries "
        "(connection refused); 0 messages synced before the failure are kept"
    )
    c = open_cache(backend, create=False)
    assert c.message_count() == 12 + 7 + 1
    assert {a["name"]: a["messages"] for a in c.status()["accounts"]} == {
        "alpha": 13, "beta": 8}
    assert not c.has_unthreaded()
    assert c.status()["threads"] == 20

    # Again without the dead account: nothing new, exit 0.
    cfg = sync_config(tmp_path, dovecots, None)
    r = run("--config", str(cfg), "--db", backend, "sync", env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(ln.split(" in ")[0] for ln in r.stderr.splitlines()) == [
        "alpha: 0 messages fetched, 0 removed, 0 skipped",
        "beta: 0 messages fetched, 0 removed, 0 skipped",
    ]

    # A sync of an account held by another process: exit 1 for it, the other still syncs.
    dovecots[1].add("INBOX", mail(dovecots[1].user, 30), BASE + 3600)
    with c.lock_account("alpha"):
        r = run("--config", str(cfg), "--db", backend, "sync", "alpha", "beta", env=env)
    assert r.returncode == 1
    assert sorted(r.stderr.splitlines())[0].startswith("beta: 1 messages fetched")
    assert sorted(r.stderr.splitlines())[1] == (
        f"replytime: error: alpha: account 'alpha' is being imported or synced into "
        f"{c.where} by another replytime process; try again when it has finished"
    )
    assert c.message_count() == 21


def test_sync_refuses_file_accounts_and_bad_jobs(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[team]\ninternal_domains = ["acme.example"]\n'
                   '[[accounts]]\nname = "disk"\ntype = "files"\npaths = ["/tmp"]\n')
    db = str(tmp_path / "c.sqlite")
    r = run("--config", str(cfg), "--db", db, "sync", "disk")
    assert (r.returncode, r.stderr) == (
        2, "replytime: error: account 'disk' is a files source: use import\n")
    r = run("--config", str(cfg), "--db", db, "sync")
    assert r.returncode == 2 and "no gmail, imap or microsoft accounts in the config" in r.stderr
    r = run("--config", str(cfg), "--db", db, "sync", "--jobs", "0", "disk")
    assert r.returncode == 2 and "--jobs" in r.stderr
    assert not Path(db).exists()


def test_one_display_with_a_bar_per_account() -> None:
    from replytime.syncing import Board

    lines: list[str] = []
    with Board(2, enabled=True, echo=lines.append) as board:
        assert board.bar is not None
        alpha, beta = board.lane("alpha"), board.lane("beta")
        alpha.set_total(10)
        alpha.advance(4, note="INBOX")
        beta.advance(2)
        tasks = {t.description: t for t in board.bar.tasks}
        assert list(tasks) == ["syncing 2 accounts", "alpha", "beta"]
        assert (tasks["alpha"].completed, tasks["alpha"].total) == (4, 10)
        assert tasks["alpha"].fields["note"] == "INBOX" and tasks["beta"].completed == 2
        board.finished("alpha: 4 messages fetched")
        assert tasks["syncing 2 accounts"].completed == 1
        assert board.bar.live.is_started
    assert not board.bar.live.is_started
    with Board(1, enabled=False, echo=lines.append) as quiet:
        assert quiet.bar is None
        quiet.lane("gamma").advance(5)  # counted, nothing drawn
        quiet.finished("gamma: 5 messages fetched")
    assert lines == ["gamma: 5 messages fetched"]


@pytest.mark.parametrize(("signame", "code", "word"),
                         [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_interrupted_parallel_sync_stops_at_once(tmp_path: Path, dovecots: list[Dovecot],
                                                 signame: str, code: int, word: str) -> None:
    """Ctrl-C (or SIGTERM from cron/systemd) while a worker waits between retries: the
    command stops within a second, keeping what the other worker committed."""
    import signal

    cfg = sync_config(tmp_path, dovecots, free_port())
    cfg.write_text(cfg.read_text().replace("retries = 1\nretry_delay = 0.01",
                                           "retries = 5\nretry_delay = 30"))
    db = str(tmp_path / "c.sqlite")
    proc = start("--config", str(cfg), "--db", db, "sync", "--jobs", "3",
                 env={PASSWORD_ENV: dovecots[0].password})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until alpha and beta are stored
        if Path(db).exists() and open_cache(db).message_count() == 20:
            break
        time.sleep(0.1)
    sent = time.monotonic()
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 5  # not the minutes of retries ahead
    assert proc.returncode == code
    assert err.endswith(f"replytime: {word}; work done so far is saved\n"), err
    assert open_cache(db).message_count() == 20
