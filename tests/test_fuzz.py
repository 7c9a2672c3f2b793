"""Fuzzing with hypothesis: header parsing, file import and threading never crash on bad input
(bad input never crashes an import: the message is kept or skipped and counted).

Every test is derandomized (the same cases on every run, so CI is reproducible) and bounded by
``max_examples``; ``test_zz_fuzz_case_count`` reports how many cases ran in all.
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replytime.api import refresh_threads
from replytime.config import Config
from replytime.model import MessageRecord
from replytime.sources.files import import_paths, maildir_location
from replytime.sources.headers import parse_date_ms, parse_header_block
from replytime.store.sqlite import SQLiteCache
from tests.paths import CORPORA

MIN_MS, MAX_MS = 0, 7_258_118_400_000  # 1970-01-01 .. 2200-01-01, the parser's year range
CASES: collections.Counter[str] = collections.Counter()

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(n: int) -> Callable[[F], F]:
    """Hypothesis settings of this file: reproducible, no deadline, ``n`` cases."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


def corpus_blocks() -> list[bytes]:
    """The real corpus messages (header and the start of the body), in a stable order."""
    files = sorted(p for p in CORPORA.rglob("*") if p.is_file() and p.name[0] != ".")
    assert len(files) > 200
    return [p.read_bytes()[:16_384] for p in files]


CORPUS = corpus_blocks()


def check_record(rec: MessageRecord) -> None:
    """What the cache and the metrics rely on, whatever the input."""
    assert isinstance(rec, MessageRecord)
    for name in ("message_id", "from_addr", "subject", "in_reply_to", "content_type",
                 "provider_thread_id"):
        value = getattr(rec, name)
        assert value is None or (isinstance(value, str) and "\0" not in value), (name, value)
    for name in ("to_addrs", "cc_addrs", "reply_to", "references", "labels"):
        value = getattr(rec, name)
        assert isinstance(value, tuple) and all(isinstance(v, str) for v in value), name
    assert rec.time_ms is None or MIN_MS <= rec.time_ms < MAX_MS + 86_400_000
    assert rec.time_offset is None or abs(rec.time_offset) < 24 * 60
    assert isinstance(rec.key, str) and rec.key


# -- mutations of real messages ------------------------------------------------------------
HOSTILE_LINES = [
    b"Subject: =?x-unknown?q?caf=E9_=3F?=",
    b"Subject: =?utf-8?b?////?= =?iso-8859-1?q?=ZZ?=",
    b"From: =?utf-7?q?+AGEAYgBj-?= <a@b.example>",
    b"From: \"unterminated <x@y.example>",
    b"To: a@b.example, , ,;; <>, \"q\\\"uote\" <c@d.example>, (comment <e@f.example>",
    b"Cc: undisclosed-recipients:;",
    b"Date: Mon, 31 Feb 2026 25:61:61 +9999",
    b"Date: Tue, 3 Nov 99999999999 09:15:00 +0100",
    b"Date: Thu, 1 Jan 1900 00:00:00 -0000",
    b"Date: \xff\xfe\x00garbage",
    b"Received: from x by y; Sun, 31 Dec 2199 23:59:59 -2359",
    b"Message-ID: <>",
    b"Message-ID: < spaced id @x >",
    b"In-Reply-To: <a@b> <a@b> <yes>",
    b"References: <loop@x> <loop@x> <loop@x>",
    b"Content-Type: multipart/report; report-type=delivery-status",
    b"Auto-Submitted: \xc3\x28",
    b"X-Gmail-Labels: =?utf-8?q?=C3=28?=,,Inbox",
    b"X-GM-THRID: \t",
    b" folded continuation without a field",
    b"no colon at all",
    b": empty name",
    b"\r",
]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("dup-line"), st.integers(0, 1 << 20), st.integers(1, 4)),
    st.tuples(st.just("drop-line"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("nul"), st.integers(0, 1 << 20), st.integers(1, 8)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.integers(0, len(HOSTILE_LINES) - 1)),
    st.tuples(st.just("crlf"), st.just(0), st.just(0)),
)


def mutate(data: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    for kind, where, arg in steps:
        lines = data.split(b"\n")
        at = where % (len(data) + 1)
        line = where % len(lines)
        if kind == "flip" and data:
            i = where % len(data)
            data = data[:i] + bytes([data[i] ^ arg]) + data[i + 1:]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "dup-line":
            data = b"\n".join(lines[:line] + [lines[line]] * (arg + 1) + lines[line + 1:])
        elif kind == "drop-line":
            data = b"\n".join(lines[:line] + lines[line + 1:])
        elif kind == "nul":
            data = data[:at] + b"\0" * arg + data[at:]
        elif kind == "insert":
            data = b"\n".join(lines[:line] + [HOSTILE_LINES[arg]] + lines[line:])
        elif kind == "crlf":
            data = data.replace(b"\n", b"\r\n")
    return data


mutated_message = st.builds(
    mutate, st.sampled_from(CORPUS), st.lists(mutation, min_size=1, max_size=6))


@fuzz(400)
@given(st.binary(max_size=2048))
def test_random_bytes_parse_to_a_record(data: bytes) -> None:
    CASES["random bytes"] += 1
    check_record(parse_header_block(data))


@fuzz(600)
@given(mutated_message)
def test_mutated_corpus_messages_parse_to_a_record(data: bytes) -> None:
    CASES["mutated corpus messages"] += 1
    check_record(parse_header_block(data))


header_name = st.sampled_from(["From", "To", "Cc", "Reply-To", "Date", "Message-ID",
                               "In-Reply-To", "References", "Subject", "Received",
                               "Content-Type", "Auto-Submitted", "Precedence", "X-GM-THRID",
                               "X-Gmail-Labels", "List-Id", "from", "DATE"])
encoded_word = st.builds(
    lambda cs, enc, text: f"=?{cs}?{enc}?{text}?=",
    st.sampled_from(["utf-8", "x-unknown", "iso-8859-1", "", "utf-7", "koi8-r", "bogus*lang"]),
    st.sampled_from(["q", "b", "Q", "B", "x", ""]),
    st.text(alphabet="=?_ABCabc0123456789+/ \t\x00\xe9", max_size=30),
)
header_value = st.one_of(
    st.text(max_size=80),
    encoded_word,
    st.lists(encoded_word, max_size=4).map(" ".join),
    st.builds("{}, {} {} {} {:02}:{:02}:{:02} {}".format,
              st.sampled_from(["Mon", "Xyz", ""]), st.integers(-5, 40),
              st.sampled_from(["Jan", "Feb", "Foo", "feb"]), st.integers(-1, 100_000),
              st.integers(0, 99), st.integers(0, 99), st.integers(0, 99),
              st.sampled_from(["+0000", "-2400", "+9959", "EST", "GMT", "+01", ""])),
)


@fuzz(300)
@given(st.lists(st.tuples(header_name, header_value), max_size=12))
def test_generated_headers_parse_to_a_record(fields: list[tuple[str, str]]) -> None:
    CASES["generated header fields"] += 1
    block = "".join(f"{n}: {v}\n" for n, v in fields).encode("utf-8", "surrogatepass")
    rec = parse_header_block(block)
    check_record(rec)
    for name, value in fields:  # a date the parser accepts is a real instant in range
        if name.lower() == "date":
            ms, offset = parse_date_ms(value)
            assert (ms is None) == (offset is None)


# -- the extremes, exactly ---------------------------------------------------------------
def test_several_megabyte_header_and_thousands_of_recipients() -> None:
    rcpts = ", ".join(f"User {i} <u{i}@client{i % 7}.example>" for i in range(5000))
    block = (b"From: lead@client.example\nTo: " + rcpts.encode() + b"\nSubject: " +
             b"x" * 6_000_000 + b"\nMessage-ID: <big@client.example>\n\n")
    rec = parse_header_block(block)
    check_record(rec)
    CASES["extremes"] += 1
    assert rec.to_addrs == tuple(f"u{i}@client{i % 7}.example" for i in range(5000))
    assert rec.message_id == "big@client.example"
    assert rec.subject is not None and len(rec.subject) == 6_000_000


def test_references_loop_thousands_deep() -> None:
    ids = [f"<m{i % 500}@loop.example>" for i in range(20_000)]  # 500 ids, 40 times round
    rec = parse_header_block(b"Message-ID: <m0@loop.example>\nIn-Reply-To: <m499@loop.example>"
                             b"\nReferences: " + " ".join(ids).encode() + b"\n\n")
    CASES["extremes"] += 1
    check_record(rec)
    assert len(rec.references) == 20_000
    assert rec.in_reply_to == "m499@loop.example"


# -- import of a directory of hostile files ------------------------------------------------
@fuzz(60)
@given(st.lists(st.one_of(mutated_message, st.binary(max_size=600)), min_size=1, max_size=14))
def test_import_stores_or_skips_every_file(contents: list[bytes]) -> None:
    CASES["imported directories"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mail"
        root.mkdir()
        paths = []
        for i, data in enumerate(contents):
            path = root / f"msg{i:03d}.eml"
            path.write_bytes(data)
            paths.append(str(path))
        cache = SQLiteCache(Path(tmp) / "c.sqlite")
        try:
            try:
                stats = import_paths(cache, [root], workers=1)
            except Exception as exc:  # only "no mail found" is allowed, and it writes nothing
                assert type(exc).__name__ == "UsageError" and "no mail found" in str(exc)
                assert cache.conn.execute("SELECT count(*) FROM locations").fetchone()[0] == 0
                return
            q = cache.conn.execute
            locations = q("SELECT location, msg_key FROM locations").fetchall()
            skipped = [r[0] for r in q("SELECT location FROM skipped")]
            keys = {k for _, k in locations}
            assert stats.fetched == len(locations) and stats.skipped == len(skipped)
            # Duplicate Message-IDs share one row: as many rows as distinct keys.
            assert q("SELECT count(*) FROM messages").fetchone()[0] == len(keys)
            places = collections.Counter()
            for loc in [loc for loc, _ in locations] + skipped:
                places[loc.split("#", 1)[0]] += 1
            for path, data in zip(paths, contents, strict=True):
                here = places[maildir_location(path)]
                if data.startswith(b"From "):
                    assert here >= 1, path  # an mbox: one place per message in it
                else:
                    assert here == 1, path  # stored once or counted as skipped once
            assert sum(places.values()) == len(locations) + len(skipped)
        finally:
            cache.close()


# -- threading on reference cycles -----------------------------------------------------------
def thread_cache(tmp: str, refs: dict[int, list[int]], n: int) -> dict[int, str]:
    """Write n messages (m{i}) with the given References into a cache, thread it, and
    return each message's thread id."""
    cache = SQLiteCache(Path(tmp) / "t.sqlite")
    try:
        records = [
            (f"loc{i}", MessageRecord(
                message_id=f"m{i}@x.example", from_addr=f"p{i}@client{i}.example",
                subject=f"unique subject {i}", time_ms=1_700_000_000_000 + i * 1000,
                time_source=2, references=tuple(f"m{j}@x.example" for j in refs.get(i, ())),
            ))
            for i in range(n)
        ]
        cache.write_batch("t", records)
        refresh_threads(cache, Config(), force=True)
        rows = cache.conn.execute("SELECT message_id, thread_id FROM messages").fetchall()
        return {int(mid[1:].split("@")[0]): tid for mid, tid in rows}
    finally:
        cache.close()


def components(n: int, refs: dict[int, list[int]]) -> list[int]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, js in refs.items():
        for j in js:
            parent[find(i)] = find(j)
    return [find(i) for i in range(n)]


@fuzz(40)
@given(st.integers(2, 40).flatmap(lambda n: st.tuples(
    st.just(n), st.dictionaries(st.integers(0, n - 1),
                                st.lists(st.integers(0, n - 1), max_size=6), max_size=n))))
def test_threads_are_the_reference_components_whatever_the_cycles(
    case: tuple[int, dict[int, list[int]]]
) -> None:
    CASES["reference graphs"] += 1
    n, refs = case
    with tempfile.TemporaryDirectory() as tmp:
        got = thread_cache(tmp, refs, n)
    comp = components(n, refs)
    # Same partition; each thread named after its earliest message.
    for i in range(n):
        first = min(j for j in range(n) if comp[j] == comp[i])
        assert got[i] == f"m{first}@x.example", (i, refs)


def test_reference_cycle_thousands_deep_is_one_thread() -> None:
    CASES["extremes"] += 1
    n = 5000
    refs = {i: [(i + 1) % n] for i in range(n)}  # m0 -> m1 -> ... -> m4999 -> m0
    refs[0] = [(k * 7) % n for k in range(3 * n)]  # and one References loop 15,000 long
    with tempfile.TemporaryDirectory() as tmp:
        got = thread_cache(tmp, refs, n)
    assert set(got.values()) == {"m0@x.example"} and len(got) == n


def test_zz_fuzz_case_count(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this file: how many fuzz cases the tests above ran."""
    with capsys.disabled():
        print(f"\nfuzz cases run: {sum(CASES.values())} {dict(sorted(CASES.items()))}")
    if len(CASES) >= 6:  # the whole file ran (not a -k selection)
        assert sum(CASES.values()) >= 1400
