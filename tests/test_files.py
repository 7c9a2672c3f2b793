"""Offline import (connectors/files.py) on the real notmuch corpora and on hand-made broken
input: exact counts, stable locations, idempotent re-imports, flat streaming of mbox files."""

from __future__ import annotations

import builtins
import contextlib
import io
import mailbox
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from replytime.errors import UsageError
from replytime.model import PROBLEM_NO_TIME, PROBLEM_TRUNCATED
from replytime.progress import Progress
from replytime.sources import files
from replytime.sources.files import (
    MAX_HEADER,
    import_paths,
    iter_messages,
    maildir_location,
    scan_mbox,
)
from replytime.store import SCHEMA_VERSION, open_cache
from replytime.store.sqlite import SQLiteCache
from tests.paths import CORPORA


def corpus_files(folder: str) -> list[Path]:
    return sorted(p for p in (CORPORA / folder).rglob("*") if p.is_file())


def dump(cache: SQLiteCache) -> dict[str, list[tuple[object, ...]]]:
    """Every table in full, in a stable order (the accounts' sync time left out)."""
    q = cache.conn.execute
    return {
        "messages": q("SELECT * FROM messages ORDER BY id").fetchall(),
        "locations": q("SELECT * FROM locations ORDER BY account, location").fetchall(),
        "skipped": q("SELECT * FROM skipped ORDER BY account, location").fetchall(),
        "accounts": q("SELECT name, type, state FROM accounts ORDER BY name").fetchall(),
    }


def counts(cache: SQLiteCache) -> tuple[int, int, int, int]:
    """(messages, locations, skipped, messages without a time)."""
    q = cache.conn.execute
    return (
        q("SELECT count(*) FROM messages").fetchone()[0],
        q("SELECT count(*) FROM locations").fetchone()[0],
        q("SELECT count(*) FROM skipped").fetchone()[0],
        q("SELECT count(*) FROM messages WHERE time_ms IS NULL").fetchone()[0],
    )


def settle(root: Path, age: float = 10.0) -> None:
    """Date ``root`` and every file under it ``age`` seconds back: a file modified just
    before an import is read again by the next one (files.RACY_NS), as a user's mail files
    are not. Only for files not imported yet: a new mtime is a change."""
    when = time.time() - age
    for p in [root, *(root.rglob("*") if root.is_dir() else ())]:
        os.utime(p, (when, when), follow_symlinks=False)


def date_folder(folder: Path, age: float = 5.0) -> None:
    """Date a folder alone (not its files) ``age`` seconds back, as if changed then."""
    when = time.time() - age
    os.utime(folder, (when, when))


def count_opens(monkeypatch: pytest.MonkeyPatch, under: Path) -> list[str]:
    """The files under ``under`` opened from now on in this process (imports with
    ``workers=1`` read in this process): works as root too, where chmod 000 would not."""
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def note(path: object) -> None:
        if isinstance(path, str | Path) and str(path).startswith(str(under)):
            opened.append(str(path))

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        note(file)
        return real_open(file, *args, **kwargs)

    def counting_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        note(path)
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(os, "open", counting_os_open)
    return opened


@pytest.fixture
def cache(tmp_path: Path) -> SQLiteCache:
    c = SQLiteCache(tmp_path / "cache.sqlite")
    yield c
    c.close()


MSG = (
    "From: Lead Person <lead@client.example>\n"
    "To: sales@acme.example\n"
    "Subject: {subject}\n"
    "Date: Tue, 03 Nov 2026 09:15:00 +0100\n"
    "Message-ID: <{mid}>\n"
    "\n"
    "Hello\n"
)


def msg(mid: str, subject: str = "Quote please") -> bytes:
    return MSG.format(mid=mid, subject=subject).encode()


# -- the real corpora ---------------------------------------------------------------------------
# Expected numbers come from inspecting the corpus independently of replytime's parser:
# `find FOLDER -type f | wc -l` for the places, and Python's email package (compat32 policy)
# for distinct Message-ID headers (every file has one); every Date parses with
# email.utils.parsedate_tz, so no message lacks a time:
#   default   53 files, 52 ids (<20091117232137.GA7669@griffis1.net> twice)
#   lkml     210 files, 176 ids (34 messages stored twice, as in the list archive)
#   threading 12 files, 12 ids; broken 4 files, 4 ids
#   duplicate  9 files, 3 ids (<87r2ecrr6x.fsf@zephyr.silentflame.com> five times)
@pytest.mark.parametrize(
    ("folder", "places", "messages"),
    [("default", 53, 52), ("lkml", 210, 176), ("threading", 12, 12), ("broken", 4, 4),
     ("duplicate", 9, 3)],
)
def test_corpus_import_counts(cache: SQLiteCache, folder: str, places: int, messages: int) -> None:
    stats = import_paths(cache, [CORPORA / folder], account="corpus")
    assert (stats.fetched, stats.skipped, stats.extra["new"]) == (places, 0, messages)
    assert counts(cache) == (messages, places, 0, 0)
    assert len(corpus_files(folder)) == places
    # One location per file, the flags suffix stripped: all of them point at real files.
    locs = {r[0] for r in cache.conn.execute("SELECT location FROM locations")}
    assert locs == {maildir_location(str(p)) for p in corpus_files(folder)}
    # No folder name became a label.
    labelled = cache.conn.execute("SELECT count(*) FROM locations WHERE labels <> ''")
    assert labelled.fetchone() == (0,)


def test_corpus_all_folders_at_once(cache: SQLiteCache) -> None:
    # The five folders have no Message-ID in common: 52 + 176 + 12 + 4 + 3 = 247 messages.
    stats = import_paths(cache, [CORPORA], account="corpus")
    assert (stats.fetched, stats.skipped) == (288, 0)
    assert counts(cache) == (247, 288, 0, 0)


def test_broken_corpus_fields(cache: SQLiteCache) -> None:
    import_paths(cache, [CORPORA / "broken"])
    rows = dict(cache.conn.execute("SELECT message_id, cc_addrs FROM messages"))
    # broken-cc has "Cc: Bob" and later "cc: Charles": the first field wins.
    assert rows["multiple-cc@example.org"] == "bob@example.org"
    loops = dict(cache.conn.execute(
        "SELECT message_id, in_reply_to FROM messages WHERE message_id LIKE 'mid-loop-%'"))
    assert loops == {"mid-loop-12@example.org": "mid-loop-21@example.org",
                     "mid-loop-21@example.org": "mid-loop-12@example.org"}


def test_duplicate_corpus_keeps_first_in_name_order(cache: SQLiteCache) -> None:
    import_paths(cache, [CORPORA / "duplicate"])
    keys = cache.conn.execute(
        "SELECT location FROM locations WHERE msg_key = '87r2ecrr6x.fsf@zephyr.silentflame.com'"
    ).fetchall()
    assert sorted(Path(k[0]).name for k in keys) == [f"msg-3-{i}" for i in range(1, 6)]
    # msg-3-1 is read first (name order); its subject is the one stored.
    subject = cache.conn.execute(
        "SELECT subject FROM messages WHERE msg_key = '87r2ecrr6x.fsf@zephyr.silentflame.com'"
    ).fetchone()[0]
    first = next(r for _, r, _ in iter_messages([CORPORA / "duplicate" / "msg-3-1:2,"]))
    assert first is not None and subject == first.subject


def test_reimport_is_idempotent(cache: SQLiteCache) -> None:
    import_paths(cache, [CORPORA / "default", CORPORA / "duplicate"])
    before = dump(cache)
    stats = import_paths(cache, [CORPORA / "default", CORPORA / "duplicate"])
    # All 62 files are passed over unchanged (43 in Maildir cur/ and new/, 19 others).
    assert (stats.fetched, stats.extra["unchanged"], stats.extra["new"]) == (0, 62, 0)
    assert dump(cache) == before


def test_pool_gives_the_same_cache_as_one_process(tmp_path: Path) -> None:
    # Tiny units so the 210 lkml files make 30 units spread over 2 worker processes.
    one = SQLiteCache(tmp_path / "one.sqlite")
    two = SQLiteCache(tmp_path / "two.sqlite")
    paths = [CORPORA / "lkml", CORPORA / "duplicate", CORPORA / "default"]
    s1 = import_paths(one, paths, workers=1, unit_files=7)
    s2 = import_paths(two, paths, workers=2, unit_files=7, batch_size=50)
    assert (s1.fetched, s2.fetched) == (272, 272)
    assert dump(one) == dump(two)
    one.close()
    two.close()


def test_same_message_in_two_folders_is_stored_once(cache: SQLiteCache, tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(CORPORA / "threading" / "ghost-root" / "child", tmp_path / name / "m1")
    stats = import_paths(cache, [tmp_path / "a", tmp_path / "b"])
    assert stats.fetched == 2 and stats.extra["new"] == 1
    assert counts(cache) == (1, 2, 0, 0)


def test_maildir_flag_change_is_not_a_new_place(cache: SQLiteCache, tmp_path: Path) -> None:
    md = tmp_path / "Mail"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    (md / "cur" / "1700000000.M1P1.host:2,").write_bytes(msg("a@x.example"))
    (md / "tmp" / "1700000001.M2P1.host").write_bytes(msg("in-delivery@x.example"))
    (md / ".notmuch").mkdir()
    (md / ".notmuch" / "flintlock").write_bytes(b"\0\0garbage")
    (md / "dovecot-uidlist").write_bytes(b"3 V1 N2\n")
    (md / ".mbsyncstate").write_bytes(b"junk\n")
    import_paths(cache, [md])
    before = dump(cache)
    os.rename(md / "cur" / "1700000000.M1P1.host:2,", md / "cur" / "1700000000.M1P1.host:2,RS")
    import_paths(cache, [md])
    assert dump(cache) == before
    assert before["locations"] == [
        ("import", str(md / "1700000000.M1P1.host"), "a@x.example", "")
    ]
    assert before["skipped"] == []  # tmp/, .notmuch, index files: not mail, not skipped either


def test_maildir_files_imported_before_are_not_read_again(
    cache: SQLiteCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files this account imported before and unchanged since are not opened again, even
    renamed for a flag; new and changed files, another account and other kept headers are
    read."""
    md = tmp_path / "Mail"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for i in range(5):
        (md / "cur" / f"170000000{i}.M1P1.host:2,").write_bytes(msg(f"{i}@x.example"))
    box = tmp_path / "box.mbox"
    box.write_bytes(b"From x Tue Nov 03 08:15:00 2026\n" + msg("m@x.example"))
    settle(tmp_path)
    first = import_paths(cache, [md, box])
    assert (first.fetched, first.extra["unchanged"]) == (6, 0)
    before = dump(cache)
    os.rename(md / "cur" / "1700000000.M1P1.host:2,", md / "cur" / "1700000000.M1P1.host:2,S")
    (md / "new" / "1700000009.M1P1.host").write_bytes(msg("9@x.example"))
    settle(md / "new")
    opened = count_opens(monkeypatch, tmp_path)
    again = import_paths(cache, [md, box], workers=1)
    assert opened == [str(md / "new" / "1700000009.M1P1.host")]
    assert (again.fetched, again.skipped, again.extra["unchanged"]) == (1, 0, 6)
    assert again.extra["new"] == 1 and counts(cache) == (7, 7, 0, 0)
    assert dump(cache)["messages"][:6] == before["messages"]
    monkeypatch.undo()

    date_folder(md / "cur")  # as if renamed 5 s ago: its mtime is trusted from now on
    nothing_new = import_paths(cache, [md, box])  # no error: all of it is in the cache already
    assert (nothing_new.fetched, nothing_new.extra["unchanged"]) == (0, 7)
    emptied = md / "cur" / "1700000001.M1P1.host:2,"
    emptied.write_bytes(b"")  # changed: read again once its folder is listed again
    settle(emptied)
    date_folder(md / "cur", 3)
    changed = import_paths(cache, [md, box])
    assert (changed.fetched, changed.skipped, changed.extra["unchanged"]) == (0, 1, 6)
    other = import_paths(cache, [md, box], account="other")
    assert (other.fetched, other.skipped) == (6, 1)  # everything, as it is now
    keep = import_paths(cache, [md, box], keep=("X-Lead-Email",))
    assert (keep.fetched, keep.skipped, keep.extra["unchanged"]) == (6, 1, 0)
    assert import_paths(cache, [md, box], keep=("x-lead-email",)).extra["unchanged"] == 7


def test_maildir_plus_plus_subfolders(cache: SQLiteCache, tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    for folder in ("", ".Sales", ".Sales.Leads"):
        for sub in ("cur", "new", "tmp"):
            (md / folder / sub).mkdir(parents=True, exist_ok=True)
    (md / "new" / "1").write_bytes(msg("1@x.example"))
    (md / ".Sales" / "cur" / "2:2,S").write_bytes(msg("2@x.example"))
    (md / ".Sales.Leads" / "new" / "3").write_bytes(msg("3@x.example"))
    (md / ".Sales.Leads" / "tmp" / "4").write_bytes(msg("4@x.example"))
    stats = import_paths(cache, [md])
    assert (stats.fetched, stats.skipped) == (3, 0)
    ids = [r[0] for r in cache.conn.execute("SELECT message_id FROM messages ORDER BY id")]
    assert ids == ["2@x.example", "3@x.example", "1@x.example"]  # depth first, name order


# -- mbox -------------------------------------------------------------------------------------
def test_mbox_round_trip(cache: SQLiteCache, tmp_path: Path) -> None:
    """The lkml messages written with the standard library's mailbox.mbox import as the same
    set of messages as the Maildir they came from."""
    box = mailbox.mbox(tmp_path / "lkml.mbox")
    for p in corpus_files("lkml"):
        box.add(p.read_bytes())
    box.flush()
    box.close()
    stats = import_paths(cache, [tmp_path / "lkml.mbox"])
    assert (stats.fetched, stats.skipped) == (210, 0)
    other = SQLiteCache(tmp_path / "maildir.sqlite")
    import_paths(other, [CORPORA / "lkml"])
    cols = "msg_key, from_addr, to_addrs, cc_addrs, subject, time_ms, in_reply_to, refs, automated"
    got = cache.conn.execute(f"SELECT {cols} FROM messages ORDER BY msg_key").fetchall()
    want = other.conn.execute(f"SELECT {cols} FROM messages ORDER BY msg_key").fetchall()
    assert len(got) == 176 and got == want
    other.close()
    # Locations are the path and the byte offset of each From line.
    data = (tmp_path / "lkml.mbox").read_bytes()
    offsets = [int(loc.rsplit("#", 1)[1]) for (loc,) in
               cache.conn.execute("SELECT location FROM locations")]
    assert len(offsets) == 210
    assert all(data[o:o + 5] == b"From " and (o == 0 or data[o - 1:o] == b"\n") for o in offsets)


def _scan(data: bytes, chunk: int, start: int = 0, end: int | None = None
          ) -> list[tuple[int, bytes, int]]:
    return list(scan_mbox(io.BytesIO(data), start, end, chunk=chunk))


MBOX = (
    b"From a@x Thu Jan  1 00:00:00 2026\n" + msg("1@x.example") +
    b">From the body, quoted: not a separator\n\n"
    b"From b@x Thu Jan  1 00:00:00 2026\r\n" + msg("2@x.example").replace(b"\n", b"\r\n") +
    b"\r\n"
    b"From c@x Thu Jan  1 00:00:00 2026\n" + msg("3@x.example").split(b"\n\n")[0] + b"\n"
    b"From d@x Thu Jan  1 00:00:00 2026\n"
    b"\nan empty header block\n"
    b"From e@x Thu Jan  1 00:00:00 2026\n" + msg("5@x.example")
)


def test_scan_mbox_is_the_same_whatever_the_chunk_size() -> None:
    whole = _scan(MBOX, 1 << 20)
    assert [o for o, _, _ in whole] == [m.start() for m in re.finditer(rb"(?m)^From ", MBOX)]
    assert [p for _, _, p in whole] == [0, 0, 0, 0, 0]
    assert whole[3][1] == b""  # d: no headers at all
    assert whole[2][1].endswith(b"Message-ID: <3@x.example>\n")  # c: headers only
    for chunk in (1, 2, 5, 6, 7, 13, 64, 100):
        assert _scan(MBOX, chunk) == whole, chunk
    # Byte ranges (how workers share a big mbox) together give every message once.
    for cut in range(1, len(MBOX)):
        assert _scan(MBOX, 16, 0, cut) + _scan(MBOX, 16, cut) == whole, cut


def test_mbox_import_locations_and_skips(cache: SQLiteCache, tmp_path: Path) -> None:
    path = tmp_path / "box.mbox"
    path.write_bytes(MBOX)
    stats = import_paths(cache, [path])
    assert (stats.fetched, stats.skipped) == (4, 1)
    offsets = [m.start() for m in re.finditer(rb"(?m)^From ", MBOX)]
    assert cache.conn.execute("SELECT location, reason FROM skipped").fetchall() == [
        (f"{path}#{offsets[3]}", "no usable headers")
    ]
    ids = [r[0] for r in cache.conn.execute("SELECT message_id FROM messages ORDER BY id")]
    assert ids == ["1@x.example", "2@x.example", "3@x.example", "5@x.example"]


def test_big_mbox_is_split_into_ranges(cache: SQLiteCache, tmp_path: Path) -> None:
    # Ranges of 4 KiB cut a 3,000-message mbox into many units, scanned by two worker
    # processes, with every message once and in file order.
    path = tmp_path / "big.mbox"
    with open(path, "wb") as f:
        for i in range(3000):
            f.write(b"From x Thu Jan  1 00:00:00 2026\n" + msg(f"{i}@big.example") + b"\n")
    units = list(files._units([path], mbox_range=4096))
    assert len(units) == (path.stat().st_size + 4095) // 4096
    stats = import_paths(cache, [path], workers=2, mbox_range=4096)
    assert (stats.fetched, stats.skipped, stats.extra["new"]) == (3000, 0, 3000)
    ids = [r[0] for r in cache.conn.execute("SELECT message_id FROM messages ORDER BY id")]
    assert ids == [f"{i}@big.example" for i in range(3000)]


def test_takeout_mbox(cache: SQLiteCache, tmp_path: Path) -> None:
    path = tmp_path / "All mail Including Spam and Trash.mbox"
    path.write_bytes(
        b"From 1780000000000000001@xxx Tue Nov 03 08:15:00 +0000 2026\n"
        b"X-GM-THRID: 1780000000000000001\n"
        b"X-Gmail-Labels: Inbox,Important,=?UTF-8?Q?Leads/Caf=C3=A9?=,Opened\n"
        + msg("t1@client.example") +
        b"\nFrom 1780000000000000002@xxx Tue Nov 03 09:15:00 +0000 2026\n"
        b"X-GM-THRID: 1780000000000000001\n"
        b"X-Gmail-Labels: Sent\n"
        b"From: Alice <alice@acme.example>\nTo: lead@client.example\n"
        b"Subject: Re: Quote please\nDate: Tue, 03 Nov 2026 10:15:00 +0100\n"
        b"Message-ID: <t2@acme.example>\nIn-Reply-To: <t1@client.example>\n\nSure\n"
    )
    stats = import_paths(cache, [path], account="takeout")
    assert (stats.fetched, stats.skipped) == (2, 0)
    rows = cache.conn.execute(
        "SELECT m.message_id, m.provider_thread_id, l.labels FROM messages m "
        "JOIN locations l USING (msg_key) ORDER BY m.id").fetchall()
    assert rows == [
        ("t1@client.example", "1780000000000000001", "Important,Inbox,Leads/Café,Opened"),
        ("t2@acme.example", "1780000000000000001", "Sent"),
    ]


def test_single_eml_file(cache: SQLiteCache, tmp_path: Path) -> None:
    path = tmp_path / "lead.eml"
    path.write_bytes(msg("eml@client.example").replace(b"\n", b"\r\n"))
    stats = import_paths(cache, [path])
    assert (stats.fetched, stats.skipped) == (1, 0)
    assert cache.conn.execute(
        "SELECT m.message_id, m.from_addr, m.subject, m.time_ms, m.time_offset, l.location "
        "FROM messages m JOIN locations l USING (msg_key)").fetchone() == (
        "eml@client.example", "lead@client.example", "Quote please", 1793693700000, 60, str(path))


# -- usage errors -------------------------------------------------------------------------------
def test_missing_path(cache: SQLiteCache, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as e:
        import_paths(cache, [CORPORA / "default", tmp_path / "nope.mbox"])
    assert str(e.value) == f"{tmp_path / 'nope.mbox'} does not exist"
    assert counts(cache) == (0, 0, 0, 0)  # checked before anything is written


def test_empty_directory(cache: SQLiteCache, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as e:
        import_paths(cache, [tmp_path / "empty"])
    assert str(e.value) == f"no mail found in {tmp_path / 'empty'}"
    assert e.value.exit_code == 2


def test_directory_of_garbage_only(cache: SQLiteCache, tmp_path: Path) -> None:
    d = tmp_path / "junk"
    d.mkdir()
    (d / "a.bin").write_bytes(bytes(range(256)) * 4)
    (d / "b.txt").write_bytes(b"")
    with pytest.raises(UsageError) as e:
        import_paths(cache, [d])
    assert str(e.value) == f"no mail found in {d} (1 empty file; 1 not a message)"
    assert counts(cache) == (0, 0, 0, 0)


def test_fifo_and_file_used_as_directory(cache: SQLiteCache, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UsageError) as e:
        import_paths(cache, [fifo])
    assert str(e.value) == f"{fifo} is not a file or a directory (mbox, Maildir or .eml expected)"
    eml = tmp_path / "lead.eml"
    eml.write_bytes(msg("x@y.example"))
    # A file used as a directory (pathlib drops a trailing slash, so go one level below it).
    with pytest.raises(UsageError) as e:
        import_paths(cache, [eml / "inner.eml"])
    assert str(e.value) == f"cannot read {eml / 'inner.eml'}: not a directory"


def test_fifo_inside_a_directory_is_skipped(cache: SQLiteCache, tmp_path: Path) -> None:
    d = tmp_path / "mail"
    d.mkdir()
    (d / "m1").write_bytes(msg("m1@x.example"))
    os.mkfifo(d / "pipe")
    stats = import_paths(cache, [d])
    assert (stats.fetched, stats.skipped) == (1, 1)
    assert cache.conn.execute("SELECT location, reason FROM skipped").fetchall() == [
        (str(d / "pipe"), "not a regular file")]


def test_unreadable_file(cache: SQLiteCache, tmp_path: Path) -> None:
    path = tmp_path / "secret.eml"
    path.write_bytes(msg("secret@x.example"))
    path.chmod(0)
    try:
        readable = True
        try:
            path.open("rb").close()
        except PermissionError:
            readable = False
        if readable:
            # Running as root: mode 000 does not stop reads, so the file simply imports.
            assert import_paths(cache, [path]).fetched == 1
        else:
            with pytest.raises(UsageError) as e:
                import_paths(cache, [path])
            assert str(e.value) == f"cannot read {path}: permission denied"
    finally:
        path.chmod(0o600)


# -- broken input -------------------------------------------------------------------------------
def test_broken_files_are_skipped_or_flagged(cache: SQLiteCache, tmp_path: Path) -> None:
    d = tmp_path / "broken"
    d.mkdir()
    good = msg("good@x.example")
    (d / "01-good").write_bytes(good)
    (d / "02-empty").write_bytes(b"")
    (d / "03-garbage").write_bytes(bytes(range(128, 256)) * 50)
    (d / "04-cut-early").write_bytes(good[:12])  # "From: Lead P": no address, id or date
    (d / "05-cut-in-headers").write_bytes(good[:good.index(b"Message-ID") + 20])
    (d / "06-nul-and-latin1").write_bytes(
        b"From: J\xe9r\xf4me <jerome@x.example>\nSubject: caf\xe9\0 au lait\n"
        b"Message-ID: <nul@x.example>\nDate: Tue, 03 Nov 2026 09:15:00 +0100\n\nbody\0\0\n")
    (d / "07-bad-charset").write_bytes(
        b"From: =?x-unknown?q?Bad?= <bad@x.example>\nSubject: =?utf-8?b?////?=\n"
        b"Message-ID: <charset@x.example>\nDate: not a date\n\n")
    (d / "08-text-file").write_bytes(b"Note: this is a README, not mail\n")
    stats = import_paths(cache, [d])
    assert (stats.fetched, stats.skipped) == (4, 4)
    assert cache.conn.execute("SELECT location, reason FROM skipped ORDER BY 1").fetchall() == [
        (str(d / "02-empty"), "empty file"),
        (str(d / "03-garbage"), "not a message"),
        (str(d / "04-cut-early"), "no usable headers"),
        (str(d / "08-text-file"), "no usable headers"),
    ]
    rows = dict(
        (r[0], r[1:]) for r in cache.conn.execute(
            "SELECT message_id, subject, from_addr, time_ms IS NULL, problems FROM messages"))
    assert rows == {
        "good@x.example": ("Quote please", "lead@client.example", 0, 0),
        # Cut in the middle of the Message-ID line: the id is partial, the block flagged.
        "good@x.": ("Quote please", "lead@client.example", 0, PROBLEM_TRUNCATED),
        "nul@x.example": ("café au lait", "jerome@x.example", 0, 0),
        "charset@x.example": ("=?utf-8?b?////?=", "bad@x.example", 1, PROBLEM_NO_TIME),
    }
    assert counts(cache) == (4, 4, 4, 1)


def test_huge_header_block_is_cut_and_flagged(cache: SQLiteCache, tmp_path: Path) -> None:
    # A header "loop": the same Received line repeated until the block is over MAX_HEADER.
    line = b"Received: from loop.example by loop.example; Tue, 03 Nov 2026 09:15:00 +0000\n"
    head = msg("huge@x.example").split(b"\n\n")[0] + b"\n"
    data = head + line * (MAX_HEADER // len(line) + 100) + b"\nbody\n"
    (tmp_path / "huge.eml").write_bytes(data)
    (tmp_path / "huge.mbox").write_bytes(b"From x Thu Jan  1 00:00:00 2026\n" + data)
    found = list(iter_messages([tmp_path / "huge.eml", tmp_path / "huge.mbox"]))
    assert [(r.message_id, r.problems) for _, r, _ in found if r] == [
        ("huge@x.example", PROBLEM_TRUNCATED), ("huge@x.example", PROBLEM_TRUNCATED)]
    assert [loc for loc, _, _ in found] == [str(tmp_path / "huge.eml"),
                                            f"{tmp_path / 'huge.mbox'}#0"]


def test_unknown_fields_only(tmp_path: Path) -> None:
    path = tmp_path / "odd"
    path.write_bytes(b"X-Only-Unknown: 1\nMessage-ID: <odd@x.example>\n\n")
    [(loc, rec, why)] = list(iter_messages([path]))
    assert rec is not None and rec.message_id == "odd@x.example" and why is None
    assert rec.problems == PROBLEM_NO_TIME
    path.write_bytes(b"X-Only-Unknown: 1\n\n")
    [(loc, rec, why)] = list(iter_messages([path]))
    assert (rec, why) == (None, "no usable headers")


def test_location_strips_maildir_flags_only_from_the_name() -> None:
    # A Maildir message's place: its folder and unique name, without cur/ or new/.
    assert maildir_location("/m/cur/123.M1P2.host:2,FRS") == "/m/123.M1P2.host"
    assert maildir_location("/m/cur/123.host!2,S") == "/m/123.host"
    assert maildir_location("/odd:2,dir/msg") == "/odd:2,dir/msg"
    assert maildir_location("/m/new/123.host") == "/m/123.host"
    assert maildir_location("/m/recur/1:2,S") == "/m/recur/1"
    assert maildir_location("/m/cur/sub/1") == "/m/cur/sub/1"
    assert maildir_location("/m/x.eml") == "/m/x.eml"


def test_cache_file_is_a_real_sqlite_database(cache: SQLiteCache) -> None:
    import_paths(cache, [CORPORA / "threading"])
    with sqlite3.connect(cache.path) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (12,)


def test_kept_headers_and_progress(cache: SQLiteCache, tmp_path: Path) -> None:
    d = tmp_path / "forms"
    d.mkdir()
    for i in range(7):
        (d / f"m{i}").write_bytes(
            b"X-Lead-Email: p%d@client.example\n" % i + msg(f"f{i}@www.acme.example"))
    (d / "zz-empty").write_bytes(b"")
    progress = Progress("importing", enabled=False)
    stats = import_paths(cache, [d], keep=("X-Lead-Email",), progress=progress, batch_size=3)
    assert (stats.fetched, stats.skipped, progress.done) == (7, 1, 8)
    extras = [r[0] for r in cache.conn.execute("SELECT extra FROM messages ORDER BY id")]
    assert extras == [f'{{"x-lead-email": "p{i}@client.example"}}' for i in range(7)]


# -- unchanged files are not read again (files table), on both cache backends ----------------
def lead(i: int, takeout: bool = False) -> bytes:
    """One mbox message (envelope line, headers, body, blank line)."""
    extra = (f"X-GM-THRID: {1000 + i}\nX-Gmail-Labels: Inbox,Leads\n" if takeout else "")
    return (f"From {i}@xxx Tue Nov 03 08:15:00 2026\n{extra}".encode()
            + msg(f"{i}@lead.example", f"Lead {i}") + b"\n")


def mailboxes(root: Path) -> dict[str, Path]:
    """A Maildir (cur/ and new/), an mbox, a folder of .eml files and a Takeout mbox."""
    md = root / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for i in range(4):
        (md / "cur" / f"17000000{i:02}.M{i}P1.host:2,S").write_bytes(msg(f"md{i}@x.example"))
    (md / "new" / "1700000099.M9P1.host").write_bytes(msg("md9@x.example"))
    box = root / "box.mbox"
    box.write_bytes(b"".join(lead(i) for i in range(10)))
    eml = root / "eml"
    eml.mkdir()
    for i in range(3):
        (eml / f"m{i}.eml").write_bytes(msg(f"eml{i}@x.example"))
    takeout = root / "Takeout" / "Mail" / "All mail Including Spam and Trash.mbox"
    takeout.parent.mkdir(parents=True)
    takeout.write_bytes(b"".join(lead(100 + i, takeout=True) for i in range(6)))
    settle(root)
    return {"maildir": md, "mbox": box, "eml": eml, "takeout": root / "Takeout"}


def rows(c: Any, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in c.conn.execute(sql).fetchall()]


def places(c: Any) -> list[tuple[Any, ...]]:
    return rows(c, "SELECT account, location, msg_key, labels FROM locations "
                   "ORDER BY account, location")


@pytest.mark.parametrize("kind", ["maildir", "mbox", "eml", "takeout"])
def test_unchanged_files_are_not_opened_again(backend: str, tmp_path: Path, kind: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = mailboxes(tmp_path / "mail")[kind]
    c = open_cache(backend)
    first = import_paths(c, [path], workers=1)
    expected_files = {"maildir": 5, "mbox": 1, "eml": 3, "takeout": 1}[kind]
    assert first.fetched == {"maildir": 5, "mbox": 10, "eml": 3, "takeout": 6}[kind]
    before = (places(c), c.status()["messages"])
    assert rows(c, "SELECT count(*) FROM files") == [(expected_files,)]
    if kind == "takeout":  # the labels came from X-Gmail-Labels
        assert {p[3] for p in before[0]} == {"Inbox,Leads"}
    opened = count_opens(monkeypatch, tmp_path / "mail")
    again = import_paths(c, [path], workers=1)
    assert opened == []
    assert (again.fetched, again.skipped, again.extra["unchanged"]) == (0, 0, expected_files)
    assert (places(c), c.status()["messages"]) == before
    c.close()


def test_appended_mbox_parses_only_the_new_messages(backend: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    box = mailboxes(tmp_path)["mbox"]
    c = open_cache(backend)
    assert import_paths(c, [box]).fetched == 10
    [(end, size)] = rows(c, "SELECT mbox_end, size FROM files")
    assert end == size == box.stat().st_size  # a clean end: the last message is complete
    ino = box.stat().st_ino
    with open(box, "ab") as f:  # as a mail delivery agent appends
        f.write(b"".join(lead(i) for i in range(10, 15)))
    settle(box)
    grown = import_paths(c, [box], workers=1)
    assert box.stat().st_ino == ino
    assert (grown.fetched, grown.extra["grown"], grown.extra["new"]) == (5, 1, 5)
    assert rows(c, "SELECT count(*) FROM messages") == [(15,)]
    assert rows(c, "SELECT count(*) FROM locations") == [(15,)]
    # ... and then nothing new: not opened.
    opened = count_opens(monkeypatch, tmp_path)
    assert import_paths(c, [box], workers=1).extra["unchanged"] == 1 and opened == []
    c.close()


def test_rewritten_shrunk_or_replaced_mbox_is_read_whole(backend: str, tmp_path: Path) -> None:
    box = mailboxes(tmp_path)["mbox"]
    c = open_cache(backend)
    import_paths(c, [box])
    data = box.read_bytes()
    # A byte changed before the old end (same inode, grown): the digest differs.
    with open(box, "r+b") as f:
        f.seek(data.index(b"Lead 3"))
        f.write(b"LEAD 3")
        f.seek(0, 2)
        f.write(lead(10))
    settle(box)
    s = import_paths(c, [box])
    assert (s.fetched, s.extra["grown"]) == (11, 0)
    # Shrunk: read whole.
    box.write_bytes(data[: data.index(b"From 5@")])
    settle(box)
    assert import_paths(c, [box]).fetched == 5
    # Replaced by a bigger file (another inode), as an editor saves: read whole.
    tmp = tmp_path / "box.new"
    tmp.write_bytes(data + lead(20))
    settle(tmp)
    os.replace(tmp, box)
    s = import_paths(c, [box])
    assert (s.fetched, s.extra["grown"]) == (11, 0)
    assert rows(c, "SELECT count(*) FROM messages") == [(12,)]
    c.close()


def test_mbox_message_being_written_is_read_again_once_whole(backend: str, tmp_path: Path
                                                              ) -> None:
    box = tmp_path / "box.mbox"
    whole = lead(0) + lead(1)
    cut = lead(2)[: lead(2).index(b"Subject")]  # its envelope line and part of its headers
    box.write_bytes(whole + cut[:-1])  # cut mid-line, as a writer still at work leaves it
    settle(box)
    c = open_cache(backend)
    assert import_paths(c, [box]).fetched == 3  # stored as read (flagged), as before
    assert rows(c, "SELECT mbox_end FROM files") == [(len(whole),)]  # its From line
    with open(box, "ab") as f:
        f.write(lead(2)[len(cut) - 1 :] + lead(3))
    settle(box)
    s = import_paths(c, [box])
    assert (s.fetched, s.extra["grown"]) == (2, 1)  # the finished message and the next one
    subjects = {r[0] for r in rows(c, "SELECT subject FROM messages WHERE message_id = "
                                       "'2@lead.example'")}
    assert subjects == {"Lead 2"}
    assert rows(c, "SELECT mbox_end FROM files") == [(box.stat().st_size,)]
    c.close()


def test_maildir_move_and_flag_change_keep_one_place(backend: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    md = mailboxes(tmp_path)["maildir"]
    c = open_cache(backend)
    import_paths(c, [md])
    before = (places(c), c.status(), rows(c, "SELECT count(*) FROM files"))
    # A mail reader moves the new message to cur/ and flags two others.
    os.rename(md / "new" / "1700000099.M9P1.host", md / "cur" / "1700000099.M9P1.host:2,")
    os.rename(md / "cur" / "1700000000.M0P1.host:2,S", md / "cur" / "1700000000.M0P1.host:2,RS")
    os.rename(md / "cur" / "1700000001.M1P1.host:2,S", md / "cur" / "1700000001.M1P1.host:2,")
    opened = count_opens(monkeypatch, tmp_path)
    s = import_paths(c, [md], workers=1)
    assert opened == []
    assert (s.fetched, s.extra["unchanged"]) == (0, 5)
    after = (places(c), c.status(), rows(c, "SELECT count(*) FROM files"))
    assert [a["last_sync"] for a in after[1]["accounts"]]  # written: the new names
    for state in (before[1], after[1]):
        for a in state["accounts"]:
            a.pop("last_sync")
    assert after == before
    assert str(md / "1700000099.M9P1.host") in {p[1] for p in after[0]}
    names = {r[0] for r in rows(c, "SELECT name FROM files")}
    assert names == {str(p) for p in (md / "cur").iterdir()}
    c.close()


def test_unchanged_maildir_folder_is_not_listed(backend: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A cur/ or new/ whose mtime and inode are as when all its files were stored is not
    listed again (files.FOLDERS_STATE); one with a file added, renamed or unreadable is, and
    a folder changed just before it was listed is not trusted next time."""
    md = mailboxes(tmp_path)["maildir"]
    c = open_cache(backend)
    assert import_paths(c, [md]).fetched == 5
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        listed.append(os.path.basename(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    opened = count_opens(monkeypatch, tmp_path)
    again = import_paths(c, [md], workers=1)
    assert (again.fetched, again.extra["unchanged"], listed, opened) == (0, 5, ["Maildir"], [])
    # A message rewritten in place leaves its folder's mtime: not read (Maildir messages
    # are never rewritten; README.md, "Commands").
    (md / "cur" / "1700000002.M2P1.host:2,S").write_bytes(msg("rewritten@x.example"))
    assert import_paths(c, [md], workers=1).fetched == 0 and opened == []
    # A new message: new/ is listed and its file read; new/ was modified just now, so it
    # is listed again next time (and only then trusted), cur/ never.
    (md / "new" / "1700000100.M10P1.host").write_bytes(msg("md10@x.example"))
    settle(md / "new" / "1700000100.M10P1.host")  # the file, not its folder
    listed.clear()
    s = import_paths(c, [md], workers=1)
    assert (s.fetched, s.extra["unchanged"], listed) == (1, 5, ["Maildir", "new"])
    assert opened == [str(md / "new" / "1700000100.M10P1.host")]
    date_folder(md / "new")
    listed.clear()
    assert import_paths(c, [md], workers=1).extra["unchanged"] == 6 and listed[1:] == ["new"]
    listed.clear()
    assert import_paths(c, [md], workers=1).extra["unchanged"] == 6 and listed[1:] == []
    # A file that cannot be read: its folder is not recorded, so the file is tried again.
    late = md / "new" / "1700000101.M11P1.host"
    late.write_bytes(msg("md11@x.example"))
    settle(late)
    date_folder(md / "new")
    real_os_open = os.open

    def refusing(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path) == str(late):
            raise PermissionError(13, "Permission denied")
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    s = import_paths(c, [md], workers=1)
    assert (s.fetched, s.skipped) == (0, 1)
    monkeypatch.setattr(os, "open", real_os_open)
    listed.clear()
    s = import_paths(c, [md], workers=1)
    assert (s.fetched, listed[1:]) == (1, ["new"])
    assert rows(c, "SELECT count(*) FROM messages") == [(7,)]
    c.close()


def test_a_failed_import_records_only_files_whose_messages_are_stored(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = mailboxes(tmp_path)
    c = open_cache(backend)
    real = type(c).write_rows
    calls = []

    def failing(self: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        real(self, *args, **kwargs)

    monkeypatch.setattr(type(c), "write_rows", failing)
    with pytest.raises(OSError):
        import_paths(c, [paths["eml"], paths["maildir"], paths["mbox"]], batch_size=2,
                     unit_files=2, workers=1)
    monkeypatch.undo()
    # Every recorded file has all its messages stored.
    stored = {r[0] for r in rows(c, "SELECT location FROM locations")}
    for place, end in rows(c, "SELECT place, mbox_end FROM files"):
        assert end is None and place in stored
    recorded = rows(c, "SELECT count(*) FROM files")[0][0]
    assert 0 < recorded < 9
    s = import_paths(c, [paths["eml"], paths["maildir"], paths["mbox"]])
    assert s.extra["unchanged"] == recorded
    assert rows(c, "SELECT count(*) FROM messages") == [(18,)]
    assert rows(c, "SELECT count(*) FROM files") == [(9,)]
    c.close()


def test_migration_from_schema_3(backend: str, tmp_path: Path) -> None:
    """A cache of the previous schema gets the files table, and its Maildir places lose
    cur/ and new/: a message imported from both (moved between two imports) keeps one."""
    md = mailboxes(tmp_path)["maildir"]
    # What schema 3 stored: the flags stripped, cur/ and new/ kept; the new message twice.
    key = str(md / "1700000099.M9P1.host")
    legacy = [("import", str(md / "cur" / f"17000000{i:02}.M{i}P1.host"), f"md{i}@x.example")
              for i in range(4)]
    legacy += [("import", str(md / "new" / "1700000099.M9P1.host"), "md9@x.example"),
               ("import", str(md / "cur" / "1700000099.M9P1.host"), "md9@x.example"),
               ("import", str(tmp_path / "box.mbox") + "#0", "0@lead.example"),
               ("imap", "INBOX/cur/7", "imap@x.example")]
    accounts = "INSERT INTO accounts (name, type) VALUES ('import', 'files'), ('imap', 'imap')"
    if backend.startswith("postgresql"):
        import psycopg

        from replytime.store.postgres import MIGRATIONS as PG

        with psycopg.connect(backend, autocommit=True) as conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for m in PG[:3]:
                conn.execute(m)
            conn.execute("INSERT INTO schema_version VALUES (3)")
            conn.execute(accounts)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO locations (account, location, msg_key) "
                                "VALUES (%s, %s, %s)", legacy)
    else:
        from replytime.store.sqlite import MIGRATIONS as LITE

        with contextlib.closing(sqlite3.connect(backend)) as conn:
            conn.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL);"
                               + "".join(LITE[:3]) + "INSERT INTO schema_version VALUES (3);")
            conn.execute(accounts)
            conn.executemany("INSERT INTO locations (account, location, msg_key) "
                             "VALUES (?, ?, ?)", legacy)
            conn.commit()
    c = open_cache(backend)
    assert c.schema_version == SCHEMA_VERSION
    got = {(a, loc) for a, loc, _, _ in places(c)}
    assert got == {("import", str(md / f"17000000{i:02}.M{i}P1.host")) for i in range(4)} | {
        ("import", key), ("import", str(tmp_path / "box.mbox") + "#0"),
        ("imap", "INBOX/cur/7")}
    # The next import finds every place where it is: nothing added.
    import_paths(c, [md])
    assert len(places(c)) == len(got)
    c.close()


def test_cli_summary_says_how_many_files_were_unchanged(tmp_path: Path) -> None:
    import subprocess
    import sys

    paths = mailboxes(tmp_path / "mail")
    script = Path(sys.executable).with_name("replytime")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    cmd = [str(script), "--db", str(tmp_path / "c.sqlite"), "import", str(paths["eml"])]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0 and first.stderr.startswith("imported 3 messages (0 skipped) ")
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stderr.startswith(
        "imported 0 messages (0 skipped, 3 files unchanged) from 1 path(s) in "), again.stderr
