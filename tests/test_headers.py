"""Unit tests of headers.py: addresses, dates, automated markers (docs/definitions.md), ids,
encoded words, the fallback key, and the raw field splitter."""

from __future__ import annotations

import random
from email.utils import formatdate, parsedate_tz

import pytest

from replytime.model import (
    AUTO_SUBMITTED,
    AUTOMATED_MARKERS,
    NOREPLY_MARKER,
    PROBLEM_BAD_ADDRESS,
    PROBLEM_MALFORMED,
    PROBLEM_NO_TIME,
    TIME_DATE,
    TIME_NONE,
    TIME_RECEIVED,
    TIME_SERVER,
)
from replytime.sources.headers import (
    WANTED_HEADERS,
    decode_words,
    header_block_end,
    is_automated,
    parse_addresses,
    parse_date_ms,
    parse_header_block,
    parse_references,
    record_from_fields,
    split_fields,
)

BASE = (
    b"From: Lead <lead@client.example>\n"
    b"To: sales@acme.example\n"
    b"Subject: Quote\n"
    b"Date: Tue, 03 Nov 2026 09:15:00 +0100\n"
    b"Message-ID: <m1@client.example>\n"
)


def block(*extra: str, base: bytes = BASE) -> bytes:
    return base + "".join(e + "\n" for e in extra).encode() + b"\nbody\n"


# -- addresses ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "addrs"),
    [
        ("alice@acme.example", ("alice@acme.example",)),
        ("Alice Ng <Alice@ACME.Example>", ("alice@acme.example",)),  # case folded
        ('"Ng, Alice" <alice@acme.example>, bob@acme.example',  # quoted comma
         ("alice@acme.example", "bob@acme.example")),
        ('"Quoted, comma" <q@x.example>', ("q@x.example",)),
        ("alice@acme.example (Alice Ng, Sales)", ("alice@acme.example",)),  # comment
        ("Alice (the boss) <alice@acme.example>", ("alice@acme.example",)),
        ("=?utf-8?q?J=C3=A9r=C3=B4me?= <jerome@x.example>", ("jerome@x.example",)),  # RFC 2047
        ("=?utf-8?b?U8O2cmVu?= <soren@x.example>, =?iso-8859-1?q?Ren=E9?= <rene@x.example>",
         ("soren@x.example", "rene@x.example")),
        ("Team: alice@acme.example, \"B, Bob\" <bob@acme.example>;, carol@x.example",  # group
         ("alice@acme.example", "bob@acme.example", "carol@x.example")),
        ("undisclosed-recipients:;", ()),  # empty group
        ("a@b.example,, c@d.example", ("a@b.example", "c@d.example")),
        ("Alice <alice@acme.example", ("alice@acme.example",)),  # missing '>' is forgiven
    ],
)
def test_addresses(value: str, addrs: tuple[str, ...]) -> None:
    assert parse_addresses(value) == (addrs, False)


def test_addresses_missing_and_bad() -> None:
    assert parse_addresses(None) == ((), False)
    assert parse_addresses("") == ((), False)
    # Something with an "@" that yields no address is a data-quality problem.
    assert parse_addresses('"unterminated <x@y') == ((), True)
    rec = parse_header_block(block(base=BASE.replace(
        b"To: sales@acme.example", b'To: "unterminated <x@y')))
    assert rec.to_addrs == () and rec.problems == PROBLEM_BAD_ADDRESS
    assert rec.from_addr == "lead@client.example"


# -- dates --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Tue, 03 Nov 2026 09:15:00 +0100", (1793693700000, 60)),
        ("Tue, 3 Nov 2026 09:15 -0530", (1793717100000, -330)),  # no seconds, half-hour zone
        ("Tue, 03 Nov 2026 09:15:00 +0000 (UTC)", (1793697300000, 0)),  # trailing comment
        ("Tue, 03 Nov 2026 09:15:00 -0000", (1793697300000, 0)),  # "-0000": unknown zone
        ("3 Nov 2026 09:15:00 GMT", (1793697300000, 0)),  # zone name, no weekday
        ("Tue, 03 Nov 2026 09:15:00 EST", (1793715300000, -300)),
        ("Tue, 03 Nov 26 09:15:00 +0000", (1793697300000, 0)),  # two-digit year
        ("Thu, 29 Feb 2024 23:59:60 +0000", (1709251200000, 0)),  # leap day, leap second
        ("Fri, 1 Jan 2200 00:00:00 +1400", (7258068000000, 840)),
    ],
)
def test_dates(value: str, expected: tuple[int, int]) -> None:
    assert parse_date_ms(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None, "", "garbage", "Tue, 03 Nov",
        "Wed, 31 Dec 1969 23:59:59 +0000",  # before 1970: out of range
        "Tue, 03 Nov 2201 09:15:00 +0000",  # after 2200: out of range
        "Tue, 31 Feb 2026 09:15:00 +0000",  # no such day
        "Tue, 03 Nov 2026 25:15:00 +0000",  # no such hour
        "Tue, 03 Nov 2026 09:61:00 +0000",
        "Tue, 03 Nov 2026 09:15:00 +9900",  # not a time zone
        "Tue, 03 Nov 2026 09:15:00 +0175",
    ],
)
def test_unusable_dates(value: str | None) -> None:
    assert parse_date_ms(value) == (None, None)


def test_fast_date_path_agrees_with_the_standard_library() -> None:
    rnd = random.Random(5)
    for _ in range(5000):
        t = rnd.uniform(0, 7e9)
        minutes = rnd.choice([0, 60, -300, 330, 345, -570, 765, -720, 840])
        sign = "+" if minutes >= 0 else "-"
        stamp = formatdate(t)[:-5] + f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
        parts = parsedate_tz(stamp)
        assert parts is not None and parts[9] == minutes * 60
        # formatdate wrote UTC wall-clock time; read at the new offset it is minutes earlier.
        want = (int(t) - minutes * 60) * 1000
        assert parse_date_ms(stamp) == (want, minutes), stamp


def test_time_sources() -> None:
    rec = parse_header_block(block())
    assert (rec.time_ms, rec.time_offset, rec.time_source) == (1793693700000, 60, TIME_DATE)
    # The server's receive time wins; the Date header still gives the offset.
    rec = parse_header_block(block(), server_time_ms=1793700000123)
    assert (rec.time_ms, rec.time_offset, rec.time_source) == (1793700000123, 60, TIME_SERVER)
    # No usable Date: the newest (topmost) Received header's date.
    no_date = BASE.replace(b"Date: Tue, 03 Nov 2026 09:15:00 +0100\n", b"Date: soon\n")
    received = (b"Received: from b by c; Tue, 03 Nov 2026 10:00:05 +0000\n"
                b"Received: from a by b; Tue, 03 Nov 2026 10:00:01 +0000\n")
    rec = parse_header_block(received + no_date + b"\n")
    assert (rec.time_ms, rec.time_offset, rec.time_source) == (1793700005000, 0, TIME_RECEIVED)
    assert rec.problems == 0
    # Neither: kept, flagged.
    rec = parse_header_block(no_date + b"\n")
    assert (rec.time_ms, rec.time_source, rec.problems) == (None, TIME_NONE, PROBLEM_NO_TIME)


# -- automated markers (docs/definitions.md), one by one ------------------------------------
@pytest.mark.parametrize(
    ("extra", "marker"),
    [
        ((), 0),
        (("Auto-Submitted: auto-replied",), 2),
        (("Auto-Submitted: auto-generated; type=bounce",), 2),
        (("Auto-Submitted: no",), 0),  # explicitly not automated
        (("Auto-Submitted: No ; comment",), 0),
        (("X-Autoreply: yes",), 3),
        (("X-Autorespond: on",), 4),
        (("X-Auto-Response-Suppress: All",), 5),
        (("Precedence: bulk",), 8),
        (("Precedence: junk",), 8),
        (("Precedence: list",), 8),
        (("Precedence: auto_reply",), 8),
        (("Precedence: first-class",), 0),
        (("List-Id: Sales news <news.acme.example>",), 6),
        (("List-Unsubscribe: <mailto:unsub@news.example>",), 7),
        (("Content-Type: multipart/report; report-type=delivery-status",), 10),
        (("Content-Type: multipart/mixed; boundary=x",), 0),
    ],
)
def test_automated_markers(extra: tuple[str, ...], marker: int) -> None:
    """Each marker alone makes a message automated, and the cache keeps which one it was
    (``replytime explain`` names it)."""
    assert parse_header_block(block(*extra)).automated == marker
    assert (marker in AUTOMATED_MARKERS) is (marker != 0)


def test_first_marker_found_is_kept() -> None:
    rec = parse_header_block(block("List-Id: <x.example>", "Auto-Submitted: auto-replied"))
    assert rec.automated == AUTO_SUBMITTED


@pytest.mark.parametrize(
    ("sender", "automated"),
    [
        ("noreply@acme.example", True),
        ("no-reply@acme.example", True),
        ("No_Reply@acme.example", True),
        ("do-not-reply@acme.example", True),
        ("donotreply@acme.example", True),
        ("noreply+bounce-42@acme.example", True),
        ("MAILER-DAEMON@mx.acme.example", True),
        ("postmaster@acme.example", True),
        ("reply@acme.example", False),
        ("noreplyneeded@acme.example", False),
        ("alice.noreply@acme.example", False),
    ],
)
def test_automated_sender_local_part(sender: str, automated: bool) -> None:
    rec = parse_header_block(block(base=BASE.replace(
        b"From: Lead <lead@client.example>", f"From: Robot <{sender}>".encode())))
    assert rec.from_addr == sender.lower()
    assert rec.automated == (NOREPLY_MARKER if automated else 0)
    assert is_automated({}, sender.lower()) is automated
    assert is_automated({}, sender.lower()) is automated  # again: a remembered answer


# -- ids ----------------------------------------------------------------------------------------
def test_message_id_and_references() -> None:
    rec = parse_header_block(
        b"Message-Id:   <ABC.123@Client.Example> (added by relay)\n"
        b"In-Reply-To: Bob's message of Tue <parent@x.example>\n"
        b"References: <root@x.example>\n <yes>\n\t<parent@x.example> junk\n"
        b"Date: Tue, 03 Nov 2026 09:15:00 +0100\n\n"
    )
    assert rec.message_id == "ABC.123@Client.Example"  # case kept: ids are case-sensitive
    assert rec.key == "ABC.123@Client.Example"
    assert rec.in_reply_to == "parent@x.example"
    assert rec.references == ("root@x.example", "parent@x.example")  # "<yes>" has no "@"
    assert parse_references("a@x.example b@x.example") == ("a@x.example", "b@x.example")
    assert parse_references("") == ()
    bare = parse_header_block(b"Message-ID: bare@x.example\n\n")
    assert bare.message_id == "bare@x.example"


def test_fallback_key_for_messages_without_message_id() -> None:
    no_id = BASE.replace(b"Message-ID: <m1@client.example>\n", b"")
    a = parse_header_block(no_id + b"\nbody one\n")
    b = parse_header_block(no_id + b"\nanother body\n")  # same headers: the same message
    c = parse_header_block(no_id.replace(b"Quote", b"Quote 2") + b"\n")
    assert a.message_id is None and a.fallback_key is not None
    assert a.key == b.key == "nomid:" + a.fallback_key
    assert len(a.fallback_key) == 40
    assert c.key != a.key
    empty_id = parse_header_block(no_id + b"Message-ID: <>\n\n")
    assert empty_id.message_id is None and empty_id.key == a.key


# -- encoded words and raw fields ---------------------------------------------------------------
def test_rfc2047_subjects() -> None:
    def subject(raw: bytes) -> str | None:
        return parse_header_block(b"Subject: " + raw + b"\nMessage-ID: <s@x>\n\n").subject

    assert subject(b"=?utf-8?q?Caf=C3=A9_cr=C3=A8me?=") == "Café crème"
    assert subject(b"=?ISO-8859-1?B?SGVsbG8g6Q==?=") == "Hello é"
    # Adjacent encoded words join without the folding blank between them.
    assert subject(b"=?utf-8?q?Re:_Pri?=\n =?utf-8?q?cing?=") == "Re: Pricing"
    assert subject(b"Plain =?utf-8?q?and_encoded?= text") == "Plain and encoded text"
    assert subject(b"=?x-unknown?q?kept?=") == "=?x-unknown?q?kept?="  # unknown charset
    assert subject(b"caf\xe9") == "café"  # raw latin-1 bytes
    assert subject("caf\u00e9".encode()) == "café"  # raw UTF-8
    assert decode_words("no encoded words") == "no encoded words"


def test_split_fields_names_folds_and_order() -> None:
    raw = (b"FROM: a@x.example\r\n"
           b"Subject : obsolete blank before the colon\r\n"
           b"X-Other: ignored\r\n"
           b"subject: second subject\r\n"
           b"References: <a@x>\r\n\t<b@x>\r\n"
           b"Not a field line\r\n"
           b"To\r\n")
    assert split_fields(raw) == [
        ("from", "a@x.example"),
        ("subject", "obsolete blank before the colon"),
        ("subject", "second subject"),
        ("references", "<a@x>\t<b@x>"),
    ]
    # parse_header_block: the first occurrence wins.
    assert parse_header_block(raw + b"\r\n").subject == "obsolete blank before the colon"


def test_field_name_spellings_are_remembered_per_wanted_set() -> None:
    # The parser remembers each spelling before a colon and the name it stands for: the
    # same spelling must give the same answer the second time, whatever came in between.
    raw = (b"sUbJeCt : first\n"
           b"From\n"  # a known spelling without a colon is no field
           b"From:a@x.example\n"
           b"X-Lead-Email: lead@client.example\n"
           b"Message-ID: <s1@x.example>\n\n")
    for _ in range(2):
        plain = parse_header_block(raw)
        kept = parse_header_block(raw, keep=("X-Lead-Email",))
        assert (plain.subject, plain.from_addr, plain.message_id) == (
            "first", "a@x.example", "s1@x.example")
        assert kept.extra == {"x-lead-email": "lead@client.example"}
        assert plain.extra == {}  # a kept name is wanted for that keep only
        assert kept.subject == plain.subject and kept.from_addr == plain.from_addr


def test_many_field_names_parse_the_same_as_few() -> None:
    # Thousands of distinct names (a generator gone wrong): the remembered spellings stay
    # bounded, and a block parses the same before and after them.
    before = parse_header_block(block("Cc: c@x.example", "Subject : s"))
    noise = b"".join(b"X-Noise-%d: v\n" % i for i in range(10_000))
    rec = parse_header_block(BASE + noise + b"Cc: c@x.example\n\n")
    assert (rec.from_addr, rec.cc_addrs) == ("lead@client.example", ("c@x.example",))
    assert parse_header_block(block("Cc: c@x.example", "Subject : s")) == before


def test_kept_headers_and_gmail_fields() -> None:
    rec = parse_header_block(
        block("X-Lead-Email: prospect@client.example", "X-GM-THRID: 1790000000000000001",
              "X-Gmail-Labels: Inbox,Important,Inbox"),
        keep=("x-lead-EMAIL", "X-Missing"))
    assert rec.extra == {"x-lead-email": "prospect@client.example"}
    assert rec.provider_thread_id == "1790000000000000001"
    assert rec.labels == ("Important", "Inbox")
    pairs = [("From", "a@x.example"), ("Message-ID", "<p@x>"), ("X-Gmail-Labels", "Sent")]
    rec = record_from_fields(pairs, server_time_ms=5, labels=["CATEGORY_PERSONAL"],
                             provider_thread_id="t1")
    assert (rec.from_addr, rec.time_ms, rec.provider_thread_id, rec.labels) == (
        "a@x.example", 5, "t1", ("CATEGORY_PERSONAL", "Sent"))


def test_malformed_blocks_never_raise() -> None:
    assert parse_header_block(b"").problems == PROBLEM_NO_TIME
    garbage = parse_header_block(bytes(range(256)) * 3)
    assert garbage.problems & PROBLEM_MALFORMED and garbage.message_id is None
    nul = parse_header_block(b"Message-ID: <n\0ul@x>\nSubject: a\0b\n\n")
    assert (nul.message_id, nul.subject) == ("nul@x", "ab")
    loop = parse_header_block(b"Received: x; Tue, 03 Nov 2026 09:15:00 +0000\n" * 20000 + b"\n")
    assert (loop.time_source, loop.message_id) == (TIME_RECEIVED, None)


def test_header_block_end() -> None:
    assert header_block_end(b"A: b\n\nbody") == 6
    assert header_block_end(b"A: b\r\n\r\nbody") == 8
    assert header_block_end(b"\nbody") == 1
    assert header_block_end(b"A: b\n") == -1
    # A CRLF blank line after an LF one does not count (the first blank line ends it).
    assert header_block_end(b"A: b\n\nB: c\r\n\r\n") == 6


def test_wanted_headers_cover_section_2() -> None:
    for name in ("From", "To", "Cc", "Reply-To", "Date", "Message-ID", "In-Reply-To",
                 "References", "Subject", "Auto-Submitted", "Precedence", "List-Id",
                 "List-Unsubscribe", "X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress",
                 "Content-Type", "Received", "X-GM-THRID", "X-Gmail-Labels"):
        assert name in WANTED_HEADERS
