"""The cache on both backends (SQLite file, real PostgreSQL server): schema versioning,
idempotent upserts, time-source precedence, locks. ``backend`` (tests/conftest.py) is a
fresh cache path or URL per test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from replytime.errors import CacheError, LockedError
from replytime.model import TIME_DATE, TIME_SERVER
from replytime.sources.headers import parse_header_block
from replytime.store import SCHEMA_VERSION, Cache, open_cache
from tests.paths import CORPORA

MSG = (b"From: Pat <pat@client.example>\r\nTo: sales@acme.example\r\n"
       b"Date: Mon, 02 Nov 2026 09:00:00 -0500\r\nMessage-ID: <a1@client.example>\r\n"
       b"Subject: Hi\r\n\r\nbody is never read")


def dump(c: Cache) -> list[tuple]:
    rows = []
    for table in ("messages", "locations", "skipped"):
        rows += [(table, *r) for r in c.conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")]
    return rows


def one(c: Cache, sql: str) -> object:
    return c.conn.execute(sql).fetchone()[0]


def test_new_cache_is_versioned(backend: str) -> None:
    c = open_cache(backend)
    assert c.schema_version == SCHEMA_VERSION
    if c.backend == "sqlite":
        assert c.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.conn.execute("PRAGMA page_size").fetchone()[0] == 16384
    else:
        assert c.backend == "postgresql" and c.where == backend


def test_upsert_is_idempotent(backend: str) -> None:
    c = open_cache(backend)
    rec = parse_header_block(MSG)
    c.write_batch("files", [("/a", rec)])
    first = dump(c)
    c.write_batch("files", [("/a", rec)])
    assert dump(c)[0] == first[0]  # message row unchanged
    assert len([r for r in dump(c) if r[0] == "messages"]) == 1


def test_same_message_in_two_places_is_stored_once(backend: str) -> None:
    c = open_cache(backend)
    c.write_batch("files", [("/inbox/a", parse_header_block(MSG)),
                            ("/archive/a", parse_header_block(MSG))])
    assert one(c, "SELECT count(*) FROM messages") == 1
    assert one(c, "SELECT count(*) FROM locations") == 2


def test_server_time_replaces_date_header_but_not_the_reverse(backend: str) -> None:
    c = open_cache(backend)
    c.write_batch("files", [("/a", parse_header_block(MSG))])
    row = c.conn.execute("SELECT time_ms, time_source, time_offset FROM messages").fetchone()
    assert tuple(row) == (1793628000000, TIME_DATE, -300)  # 2026-11-02T14:00:00Z
    server = parse_header_block(MSG, server_time_ms=1793628005000)
    c.write_batch("imap", [("INBOX/1/7", server)], account_type="imap")
    assert tuple(c.conn.execute("SELECT time_ms, time_source, time_offset FROM messages")
                 .fetchone()) == (1793628005000, TIME_SERVER, -300)
    c.write_batch("files", [("/a", parse_header_block(MSG))])
    assert one(c, "SELECT time_ms FROM messages") == 1793628005000


def test_messages_without_message_id_use_a_stable_fallback(tmp_path: Path) -> None:
    raw = MSG.replace(b"Message-ID: <a1@client.example>\r\n", b"")
    a, b = parse_header_block(raw), parse_header_block(raw)
    assert a.key == b.key and a.key.startswith("nomid:")
    other = parse_header_block(raw.replace(b"Subject: Hi", b"Subject: Other"))
    assert other.key != a.key


def test_removal_deletes_a_message_only_when_no_place_holds_it(backend: str) -> None:
    c = open_cache(backend)
    c.write_batch("g", [("id1", parse_header_block(MSG))], account_type="gmail")
    c.write_batch("files", [("/a", parse_header_block(MSG))])
    c.write_batch("g", [], account_type="gmail", removed=["id1"])
    assert one(c, "SELECT count(*) FROM messages") == 1
    c.write_batch("files", [], removed=["/a"])
    assert one(c, "SELECT count(*) FROM messages") == 0


def test_state_is_saved_with_the_batch(backend: str) -> None:
    c = open_cache(backend)
    c.write_batch("g", [("id1", parse_header_block(MSG))], account_type="gmail",
                  state={"history_id": "42"})
    assert open_cache(backend).account_state("g") == {"history_id": "42"}
    c.write_batch("g", [], account_type="gmail")  # no state given: kept
    assert c.account_state("g") == {"history_id": "42"}
    assert c.known_locations("g") == {"id1"} and c.known_locations("g", "id") == {"id1"}
    assert c.known_locations("g", "x") == set() and c.known_locations("files") == set()


def test_corrupt_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(CacheError, match="not a usable replytime cache"):
        open_cache(bad)
    with pytest.raises(CacheError, match="no cache at"):
        open_cache(tmp_path / "missing.sqlite", create=False)


def test_newer_cache_is_refused(backend: str) -> None:
    c = open_cache(backend)
    c.conn.execute("UPDATE schema_version SET version = 99")
    c.close()
    with pytest.raises(CacheError, match=r"was written by a newer replytime \(schema 99\)"):
        open_cache(backend)


def test_second_writer_is_refused(backend: str) -> None:
    a = open_cache(backend)
    b = open_cache(backend)
    with a.lock(), pytest.raises(LockedError, match="another replytime process"), b.lock():
        pass
    with b.lock():  # released after the first writer finished
        pass


def test_one_writer_per_account(backend: str) -> None:
    a, b = open_cache(backend), open_cache(backend)
    with a.lock_account("sales"):
        with pytest.raises(LockedError) as err, b.lock_account("sales"):
            pass
        assert str(err.value) == (
            f"account 'sales' is being imported or synced into {a.where} by another "
            "replytime process; try again when it has finished"
        )
        with b.lock_account("support"):  # another account: no wait
            b.write_batch("support", [("/a", parse_header_block(MSG))])
        a.write_batch("sales", [("/b", parse_header_block(MSG))])
    with b.lock_account("sales"):  # released
        pass
    assert one(a, "SELECT count(*) FROM locations") == 2


def test_a_killed_writers_leftover_children_do_not_hold_its_lock(tmp_path: Path) -> None:
    """A command killed while its parser workers live: the workers (forked children) never
    hold its account lock, so the next import is not refused while they linger."""
    db = tmp_path / "c.sqlite"
    script = (
        "import os, sys, time; from replytime.store import open_cache\n"
        "c = open_cache(sys.argv[1])\n"
        "with c.lock_account('sales'):\n"
        "    if os.fork() == 0:  # a worker that outlives its parent\n"
        "        os.write(1, b'child\\n'); time.sleep(30); os._exit(0)\n"
        "    os.write(1, b'locked\\n'); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(db)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        # Both have started (one write(2) each, so the two lines never interleave): the
        # child's after-fork hook (which drops its copy of the lock)
        # runs before its first line, so a loaded machine cannot make the check race it.
        # The two share one pipe, and print may write a line's text and its newline apart:
        # "lockedchild\n\n" is both lines too.
        assert proc.stdout is not None
        seen = proc.stdout.readline() + proc.stdout.readline()
        while seen.count("\n") < 2 or not ("locked" in seen and "child" in seen):
            line = proc.stdout.readline()
            assert line, seen
            seen += line
        assert sorted(seen.replace("\n", " ").split()) in (["child", "locked"], ["lockedchild"],
                                                           ["childlocked"])
        with pytest.raises(LockedError), open_cache(db).lock_account("sales"):
            pass  # held by the writer itself
        proc.kill()
        proc.wait()
        with open_cache(db).lock_account("sales"):  # its child lives on, without the lock
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_thread_rebuilds_wait_for_each_other(backend: str) -> None:
    """A rebuild waits while another process holds the threads lock, then runs."""
    a = open_cache(backend)
    a.write_batch("files", [("/a", parse_header_block(MSG))])
    done: list[int] = []

    def rebuild() -> None:
        b = open_cache(backend)  # its own connection, as another process would have
        done.append(b.rebuild_threads(lambda df: pd.Series("t1", index=df["id"]), "fp"))
        b.close()

    with a._threads_lock():
        worker = threading.Thread(target=rebuild)
        worker.start()
        time.sleep(0.5)
        assert done == []
    worker.join(10)
    assert done == [1]
    assert [tuple(r) for r in a.conn.execute("SELECT thread_id, messages FROM threads")] == [
        ("t1", 1)
    ]
    assert a.get_meta("threads_fingerprint") == "fp"


def test_threads_are_rebuilt_only_when_something_changed(backend: str) -> None:
    """New and changed messages lose their thread id and removals clear the fingerprint,
    so `refresh_threads` without force rebuilds exactly when the threads could differ."""
    from dataclasses import replace

    from replytime.api import refresh_threads
    from replytime.config import Config

    cfg = Config()
    c = open_cache(backend)
    reply = parse_header_block(MSG.replace(b"<a1@", b"<a2@"))
    reply = replace(reply, in_reply_to="a1@client.example", references=("a1@client.example",))
    c.write_batch("files", [("/a", parse_header_block(MSG)), ("/b", reply)])
    assert refresh_threads(c, cfg) == 2  # both new: threaded
    assert refresh_threads(c, cfg) == 0  # nothing new: not even read
    c.write_batch("files", [("/a", parse_header_block(MSG)), ("/b", reply)])  # same again
    assert one(c, "SELECT count(*) FROM messages WHERE thread_id IS NULL") == 0
    assert c.get_meta("threads_fingerprint") == cfg.fingerprint()

    # A better time source for the lead changes the row: it must be threaded again.
    served = replace(parse_header_block(MSG), time_ms=1_762_000_000_000, time_source=TIME_SERVER)
    c.write_batch("imap", [("INBOX/1/7", served)], account_type="imap")
    assert one(c, "SELECT count(*) FROM messages WHERE thread_id IS NULL") == 1
    assert c.has_unthreaded()
    refresh_threads(c, cfg)
    assert one(c, "SELECT count(DISTINCT thread_id) FROM messages") == 1
    assert not c.has_unthreaded()

    # Removing the thread's first message renames the thread: the fingerprint is cleared.
    c.write_batch("files", [], removed=["/a"])
    c.write_batch("imap", [], account_type="imap", removed=["INBOX/1/7"])
    assert c.get_meta("threads_fingerprint") == ""
    assert refresh_threads(c, cfg) == 1
    assert one(c, "SELECT thread_id FROM messages") == "a2@client.example"


def test_messages_of_active_threads_are_read_whole(backend: str) -> None:
    """``messages(active=(a, b))`` returns every message of every thread with a timed
    message in [a, b), whatever its own time (before, after, none), and nothing else."""
    from dataclasses import replace

    from replytime.api import refresh_threads
    from replytime.config import Config
    from replytime.model import TIME_NONE

    day = 86_400_000
    base = parse_header_block(MSG)

    def msg(mid: str, t: int | None, parent: str | None = None) -> tuple[str, object]:
        rec = replace(base, message_id=mid, time_ms=t, subject=mid.rstrip("0123456789"),
                      time_source=TIME_DATE if t is not None else TIME_NONE,
                      in_reply_to=parent, references=(parent,) if parent else ())
        return f"/{mid}", rec

    c = open_cache(backend)
    c.write_batch("files", [
        msg("in1", 10 * day), msg("in2", 11 * day, "in1"), msg("in3", None, "in1"),  # inside
        msg("x1", 2 * day), msg("x2", 12 * day, "x1"), msg("x3", 30 * day, "x2"),  # crossing
        msg("old1", 1 * day), msg("old2", 3 * day, "old1"),  # ends before the window
        msg("new1", 25 * day), msg("lone", None),  # starts after it; undated on its own
    ])
    refresh_threads(c, Config())
    got = c.messages(active=(10 * day, 20 * day))
    assert sorted(got["message_id"]) == ["in1", "in2", "in3", "x1", "x2", "x3"]
    assert got["id"].is_monotonic_increasing
    whole = c.messages().set_index("id")
    pd.testing.assert_frame_equal(got.set_index("id"), whole.loc[got["id"]])


def test_bulk_thread_update_rebuilds_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    """A rebuild that updates most rows drops the thread index and builds it again: same
    thread ids as the row-by-row update, and the index is there afterwards."""
    from replytime.api import refresh_threads
    from replytime.config import load_config
    from replytime.sources.files import import_paths
    from replytime.store import sqlite

    examples = Path(__file__).resolve().parents[1] / "examples"
    cfg = load_config(examples / "replytime.toml")
    ids = {}
    for rebuild_from in (10**9, 1):  # never, then always
        monkeypatch.setattr(sqlite, "THREAD_INDEX_REBUILD", rebuild_from)
        c = open_cache(tmp_path / f"{rebuild_from}.sqlite")
        import_paths(c, [examples / "mailbox.mbox"], account="example")
        assert refresh_threads(c, cfg) == 898
        ids[rebuild_from] = c.conn.execute("SELECT id, thread_id FROM messages").fetchall()
        plan = c.conn.execute("EXPLAIN QUERY PLAN SELECT id FROM messages WHERE thread_id = 'x'")
        assert "messages_thread" in str(plan.fetchall())
    assert ids[1] == ids[10**9] and len({t for _, t in ids[1]}) == 335


# -- a first import's thread inputs, kept as written (SQLite) ---------------------------------
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def reads_cache(c: Cache) -> bool:
    """Whether ``thread_inputs`` read the messages back; either way they must be exactly
    what reading the cache with ``_frame`` gives, also with the columns the kept-lead
    rebuild reads besides."""
    from replytime.analysis.kept import INPUT_EXTRA
    from replytime.store.base import CacheBase

    calls: list[object] = []
    for name in ("_frame", "_inputs_frame"):
        real = getattr(c, name)

        def counted(*args: object, real: object = real) -> pd.DataFrame:
            calls.append(args)
            return real(*args)  # type: ignore[operator]

        setattr(c, name, counted)
    try:
        got = c.thread_inputs()
        with_extra = c.thread_inputs(INPUT_EXTRA)
    finally:
        del c._frame, c._inputs_frame
    pd.testing.assert_frame_equal(got, CacheBase.thread_inputs(c))
    pd.testing.assert_frame_equal(with_extra, CacheBase.thread_inputs(c, INPUT_EXTRA))
    return bool(calls)


@pytest.mark.parametrize("source", ["example", "lkml", "threading", "duplicate", "broken"])
def test_a_first_import_keeps_exactly_what_it_wrote(tmp_path: Path, source: str) -> None:
    from replytime.sources.files import import_paths

    path = EXAMPLES / "mailbox.mbox" if source == "example" else CORPORA / source
    c = open_cache(tmp_path / "c.sqlite")
    stats = import_paths(c, [path], account="a")
    # The duplicate corpus holds the same message twice: the second write updates the first
    # row, so the copy no longer matches and the inputs are read.
    assert reads_cache(c) == (stats.extra["new"] < stats.fetched)
    assert source != "duplicate" or stats.extra["new"] < stats.fetched


def test_the_kept_thread_inputs_give_way_to_any_other_write(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from replytime.api import refresh_threads
    from replytime.config import Config
    from replytime.store import sqlite

    def msg(n: int) -> bytes:
        return MSG.replace(b"<a1@", f"<a{n}@".encode())

    def fresh(name: str) -> Cache:
        c = open_cache(tmp_path / f"{name}.sqlite")
        with c.bulk_write():  # as an import writes
            c.write_batch("files", [(f"/{n}", parse_header_block(msg(n))) for n in (1, 2)])
        return c

    synced = open_cache(tmp_path / "synced.sqlite")  # a sync threads on another connection:
    synced.write_batch("g", [("id1", parse_header_block(msg(1)))], account_type="gmail")
    assert reads_cache(synced)  # nothing kept for it

    c = fresh("plain")
    assert not reads_cache(c)
    assert refresh_threads(c, Config()) == 2
    assert reads_cache(c)  # threaded since: the copy has no thread ids

    c = fresh("other")  # another connection adds a message
    open_cache(c.path).write_batch("other", [("/3", parse_header_block(msg(3)))])
    assert reads_cache(c) and len(c.thread_inputs()) == 3

    c = fresh("better")  # the same message with a better time: the row changes
    c.write_batch("imap", [("INBOX/1/7", parse_header_block(msg(1), server_time_ms=5))],
                  account_type="imap")
    assert reads_cache(c) and c.thread_inputs()["time_ms"].tolist() == [5, 1793628000000]

    c = fresh("other-better")  # ... or changes one of ours, leaving the count as it was
    open_cache(c.path).write_batch(
        "imap", [("INBOX/1/7", parse_header_block(msg(1), server_time_ms=5))],
        account_type="imap",
    )
    assert reads_cache(c) and c.thread_inputs()["time_ms"].tolist() == [5, 1793628000000]

    c = fresh("removed")
    c.write_batch("files", [], removed=["/1"])
    assert reads_cache(c) and len(c.thread_inputs()) == 1

    c = fresh("not-empty")
    c.close()
    c = open_cache(c.path)  # a new connection to a cache that already holds messages
    with c.bulk_write():
        c.write_batch("files", [("/3", parse_header_block(msg(3)))])
    assert reads_cache(c)

    monkeypatch.setattr(sqlite, "WRITTEN_LIMIT", 3)
    c = fresh("limit")
    assert not reads_cache(c)
    c.write_batch("files", [(f"/{n}", parse_header_block(msg(n))) for n in (3, 4)])
    assert reads_cache(c) and len(c.thread_inputs()) == 4


def indexes(c: Cache) -> set[str]:
    return {r[0] for r in c.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_a_first_import_builds_its_random_order_indexes_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from replytime.api import refresh_threads
    from replytime.config import Config
    from replytime.sources.files import import_paths
    from replytime.store import sqlite

    deferred = {name for name, _ in sqlite.DEFERRED_INDEXES}
    during: list[set[str]] = []
    real_write = sqlite.SQLiteCache.write_rows

    def write_rows(self: sqlite.SQLiteCache, *args: object, **options: object) -> None:
        real_write(self, *args, **options)  # type: ignore[arg-type]
        during.append(deferred & indexes(self))

    monkeypatch.setattr(sqlite.SQLiteCache, "write_rows", write_rows)
    c = open_cache(tmp_path / "c.sqlite")
    import_paths(c, [EXAMPLES / "mailbox.mbox"], account="a", batch_size=200)
    assert len(during) > 1 and during == [set()] * len(during)  # none while importing
    assert not deferred & indexes(c)  # nor after: they are built with the threads
    assert refresh_threads(c, Config()) > 0
    assert deferred <= indexes(c)  # built while the threads were assigned
    plan = c.conn.execute("EXPLAIN QUERY PLAN SELECT labels FROM locations WHERE msg_key = 'x'")
    assert "locations_msg" in str(plan.fetchall())

    # Another import into the cache (not empty now) keeps them throughout.
    during.clear()
    import_paths(c, [CORPORA / "lkml"], account="b", batch_size=200)
    assert during and during == [deferred] * len(during)

    # Without a thread assignment they are built when the cache is closed...
    c = open_cache(tmp_path / "closed.sqlite")
    import_paths(c, [EXAMPLES / "mailbox.mbox"], account="a")
    c.close()
    assert deferred <= indexes(open_cache(tmp_path / "closed.sqlite"))

    # ... and an import killed before it built them leaves a cache that builds them on open.
    with open_cache(tmp_path / "closed.sqlite") as c:
        for name in deferred:
            c.conn.execute(f"DROP INDEX {name}")
    assert deferred <= indexes(open_cache(tmp_path / "closed.sqlite"))


def test_a_failed_index_build_is_reported_where_the_cache_is_next_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from replytime.api import refresh_threads
    from replytime.config import Config
    from replytime.sources.files import import_paths
    from replytime.store import sqlite

    c = open_cache(tmp_path / "c.sqlite")
    import_paths(c, [EXAMPLES / "mailbox.mbox"], account="a")
    monkeypatch.setattr(sqlite, "DEFERRED_INDEXES", (("locations_msg", "CREATE INDEX broken"),
                                                     ("messages_time", "SELECT 1")))
    import sqlite3

    with pytest.raises(sqlite3.OperationalError):
        refresh_threads(c, Config())
    assert c.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 898
