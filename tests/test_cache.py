"""The SQLite cache: schema versioning, idempotent upserts, time-source precedence, locks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from replytime.cache import SCHEMA_VERSION, open_cache
from replytime.errors import CacheError, LockedError
from replytime.headers import parse_header_block
from replytime.model import TIME_DATE, TIME_SERVER

MSG = (b"From: Pat <pat@client.example>\r\nTo: sales@acme.example\r\n"
       b"Date: Mon, 02 Nov 2026 09:00:00 -0500\r\nMessage-ID: <a1@client.example>\r\n"
       b"Subject: Hi\r\n\r\nbody is never read")


def dump(path: Path) -> list[tuple]:
    con = sqlite3.connect(path)
    rows = []
    for table in ("messages", "locations", "skipped"):
        rows += [(table, *r) for r in con.execute(f"SELECT * FROM {table} ORDER BY 1, 2")]
    con.close()
    return rows


def test_new_cache_is_wal_and_versioned(tmp_path: Path) -> None:
    c = open_cache(tmp_path / "c.sqlite")
    assert c.schema_version == SCHEMA_VERSION
    assert c.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_upsert_is_idempotent(tmp_path: Path) -> None:
    c = open_cache(tmp_path / "c.sqlite")
    rec = parse_header_block(MSG)
    c.write_batch("files", [("/a", rec)])
    first = dump(c.path)
    c.write_batch("files", [("/a", rec)])
    assert dump(c.path)[0] == first[0]  # message row unchanged
    assert len([r for r in dump(c.path) if r[0] == "messages"]) == 1


def test_same_message_in_two_places_is_stored_once(tmp_path: Path) -> None:
    c = open_cache(tmp_path / "c.sqlite")
    c.write_batch("files", [("/inbox/a", parse_header_block(MSG)),
                            ("/archive/a", parse_header_block(MSG))])
    assert c.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    assert c.conn.execute("SELECT count(*) FROM locations").fetchone()[0] == 2


def test_server_time_replaces_date_header_but_not_the_reverse(tmp_path: Path) -> None:
    c = open_cache(tmp_path / "c.sqlite")
    c.write_batch("files", [("/a", parse_header_block(MSG))])
    row = c.conn.execute("SELECT time_ms, time_source, time_offset FROM messages").fetchone()
    assert row == (1793628000000, TIME_DATE, -300)  # 2026-11-02T14:00:00Z
    server = parse_header_block(MSG, server_time_ms=1793628005000)
    c.write_batch("imap", [("INBOX/1/7", server)], account_type="imap")
    assert c.conn.execute("SELECT time_ms, time_source, time_offset FROM messages").fetchone() \
        == (1793628005000, TIME_SERVER, -300)
    c.write_batch("files", [("/a", parse_header_block(MSG))])
    assert c.conn.execute("SELECT time_ms FROM messages").fetchone()[0] == 1793628005000


def test_messages_without_message_id_use_a_stable_fallback(tmp_path: Path) -> None:
    raw = MSG.replace(b"Message-ID: <a1@client.example>\r\n", b"")
    a, b = parse_header_block(raw), parse_header_block(raw)
    assert a.key == b.key and a.key.startswith("nomid:")
    other = parse_header_block(raw.replace(b"Subject: Hi", b"Subject: Other"))
    assert other.key != a.key


def test_removal_deletes_a_message_only_when_no_place_holds_it(tmp_path: Path) -> None:
    c = open_cache(tmp_path / "c.sqlite")
    c.write_batch("g", [("id1", parse_header_block(MSG))], account_type="gmail")
    c.write_batch("files", [("/a", parse_header_block(MSG))])
    c.write_batch("g", [], account_type="gmail", removed=["id1"])
    assert c.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    c.write_batch("files", [], removed=["/a"])
    assert c.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_state_is_saved_with_the_batch(tmp_path: Path) -> None:
    c = open_cache(tmp_path / "c.sqlite")
    c.write_batch("g", [("id1", parse_header_block(MSG))], account_type="gmail",
                  state={"history_id": "42"})
    assert open_cache(c.path).account_state("g") == {"history_id": "42"}
    c.write_batch("g", [], account_type="gmail")  # no state given: kept
    assert c.account_state("g") == {"history_id": "42"}


def test_corrupt_and_newer_caches_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(CacheError, match="not a usable replytime cache"):
        open_cache(bad)
    c = open_cache(tmp_path / "c.sqlite")
    c.conn.execute("UPDATE schema_version SET version = 99")
    c.close()
    with pytest.raises(CacheError, match="newer replytime"):
        open_cache(tmp_path / "c.sqlite")
    with pytest.raises(CacheError, match="no cache at"):
        open_cache(tmp_path / "missing.sqlite", create=False)


def test_second_writer_is_refused(tmp_path: Path) -> None:
    a = open_cache(tmp_path / "c.sqlite")
    b = open_cache(tmp_path / "c.sqlite")
    with a.lock(), pytest.raises(LockedError, match="another replytime process"), b.lock():
        pass
    with b.lock():  # released after the first writer finished
        pass
