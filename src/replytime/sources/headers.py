"""Parse raw header blocks into MessageRecords: fast, and never raising on bad input.

Every connector ends here: files hand over the raw header bytes, IMAP the bytes of
``BODY.PEEK[HEADER.FIELDS (...)]``, Gmail a list of (name, value) pairs. The parser
keeps only the fields the metrics need and decides whether a message is automated
(docs/definitions.md, "Automated message").
"""

from __future__ import annotations

import calendar
import datetime
import functools
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_tz

from replytime.model import (
    AUTO_SUBMITTED,
    NOREPLY_MARKER,
    PRECEDENCE_MARKER,
    PRESENCE_MARKERS,
    PROBLEM_BAD_ADDRESS,
    PROBLEM_MALFORMED,
    PROBLEM_NO_TIME,
    REPORT_MARKER,
    TIME_DATE,
    TIME_NONE,
    TIME_RECEIVED,
    TIME_SERVER,
    MessageRecord,
)

# The headers every connector fetches (IMAP HEADER.FIELDS, Gmail metadataHeaders).
WANTED_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
    "Auto-Submitted",
    "Precedence",
    "List-Id",
    "List-Unsubscribe",
    "X-Autoreply",
    "X-Autorespond",
    "X-Auto-Response-Suppress",
    "Content-Type",
    "Received",
    "X-GM-THRID",
    "X-Gmail-Labels",
)
_WANTED = frozenset(h.lower() for h in WANTED_HEADERS)

_WANTED_BYTES = frozenset(h.encode() for h in _WANTED)
# Splits a header block into logical fields: at every line break not followed by a fold
# (space or tab). One C-level pass; the hot path of every import.
_LOGICAL_RE = re.compile(rb"\n(?![ \t])")
# A field name: printable ASCII but no colon (RFC 5322 ftext).
_NAME_RE = re.compile(rb"[!-9;-~]+")
_LOGICAL_STR_RE = re.compile(r"\n(?![ \t])")
_NAME_STR_RE = re.compile(r"[!-9;-~]+")
_MSGID_RE = re.compile(r"<([^<>\s]+)>")
_ANGLE_RE = re.compile(r"<\s*([^<>\s]*@[^<>\s]*)\s*>")
_QUOTED_NAME_RE = re.compile(r'"[^"]*"(?=\s*<)')
_NOREPLY_RE = re.compile(
    r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster)(?:[+].*)?$"
)
_AUTO_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})
_AUTO_PRESENT = frozenset(PRESENCE_MARKERS)
_MIN_YEAR, _MAX_YEAR = 1970, 2200
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
# The Date shape nearly every mailer writes ("Tue, 3 Nov 2026 09:15:00 +0100"), parsed without
# email.utils; anything else (zone names, two-digit years, no comma...) takes parsedate_tz.
_DATE_RE = re.compile(
    r"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+"
    r"(\d{1,2}):(\d{2})(?::(\d{2}))?\s+([+-])(\d{2})(\d{2})(?![\d:])"
)
_MONTHS = {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
# (year, month) -> (days from 1970-01-01 to its 1st, days in the month)
_MONTH_DAYS: dict[tuple[int, int], tuple[int, int]] = {}
_MAX_OFFSET = 24 * 3600 - 60  # UTC offsets beyond +-23:59 are not time zones


def header_block_end(data: bytes) -> int:
    """Offset just past the blank line ending the header block, or -1 when not in ``data``."""
    if data.startswith((b"\n", b"\r\n")):
        return 1 if data[:1] == b"\n" else 2
    lf = data.find(b"\n\n")
    # A CRLF blank line only matters before the first LF one: do not scan the rest.
    crlf = data.find(b"\r\n\r\n", 0, lf + 1 if lf >= 0 else len(data))
    if lf < 0 and crlf < 0:
        return -1
    if crlf < 0 or (0 <= lf < crlf):
        return lf + 2
    return crlf + 4


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _field_name(raw: bytes, sep: bytes) -> bytes | None:
    """The lower-case name of a logical field whose name is not a plain wanted one: allows
    blanks before the colon (obsolete syntax), refuses anything that is not a field name."""
    if not sep:
        return None
    name = raw.rstrip(b" \t")
    return name.lower() if _NAME_RE.fullmatch(name) else None


def _value(raw: bytes) -> str:
    if b"\n" in raw:  # unfold: drop the line breaks, keep the blanks that follow them
        raw = raw.replace(b"\r\n", b"").replace(b"\n", b"")
    return _text(raw).strip()


def _byte_fields(block: bytes, wanted_b: frozenset[bytes]) -> Iterator[tuple[str, bytes]]:
    """(lower-case name, raw folded value) of each wanted field of a bytes block."""
    for line in _LOGICAL_RE.split(block):
        raw, sep, value = line.partition(b":")
        name = raw.lower()
        if name not in wanted_b or not sep:
            name = _field_name(raw, sep)  # type: ignore[assignment]
            if name not in wanted_b:
                continue
        yield name.decode("ascii"), value


def split_fields(block: bytes, wanted: frozenset[str] = _WANTED) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) for each wanted field, in order of appearance."""
    wanted_b = _WANTED_BYTES if wanted is _WANTED else frozenset(w.encode() for w in wanted)
    return [(name, _value(value)) for name, value in _byte_fields(block, wanted_b)]


def _wanted_name(raw: str, wanted: frozenset[str]) -> str:
    """The wanted lower-case name of a field whose text before the colon is ``raw``, else
    "": as written, or "Name :" (obsolete syntax)."""
    name = raw.lower()
    if name in wanted:
        return name
    if raw[-1:] not in (" ", "\t"):
        return ""
    name = raw.rstrip(" \t")
    name = name.lower() if _NAME_STR_RE.fullmatch(name) else ""
    return name if name in wanted else ""


# The spellings before the colon met so far (per wanted set; "From", "MIME-Version"...), and
# the wanted name each stands for: a dozen spellings cover nearly every line of a mailbox,
# and one dict lookup is cheaper than lower-casing and looking up every line's name.
_Spellings = dict[str, str]
_SPELLINGS: _Spellings = {}
_MAX_SPELLINGS, _MAX_SPELLING = 4096, 80  # bounded whatever the input


def _field_dict(
    block: bytes, wanted: frozenset[str], wanted_b: frozenset[bytes], spellings: _Spellings
) -> dict[str, str]:
    """Like split_fields, straight into a dict where the first occurrence wins (and later
    duplicates are not even decoded)."""
    out: dict[str, str] = {}
    try:
        # Nearly every block is ASCII or UTF-8: decode it once, not field by field.
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        # Without folds every line is a field: a plain split, a third cheaper than the regex.
        folded = "\n " in text or "\n\t" in text
        for line in _LOGICAL_STR_RE.split(text) if folded else text.split("\n"):
            raw, sep, value = line.partition(":")
            name = spellings.get(raw)
            if name is None:
                name = _wanted_name(raw, wanted)
                if sep and len(raw) <= _MAX_SPELLING:  # not a line without a colon
                    if len(spellings) >= _MAX_SPELLINGS:
                        spellings.clear()
                    spellings[raw] = name
            if not name or not sep or name in out:
                continue
            if "\n" in value:
                value = value.replace("\r\n", "").replace("\n", "")
            out[name] = value.strip()
        return out
    for key, raw_value in _byte_fields(block, wanted_b):
        if key not in out:
            out[key] = _value(raw_value)
    return out


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; bad ones are left as they are."""
    if "=?" not in value:
        return value
    return _decode_encoded(value)


# Values repeat from message to message (a thread's "Re:" subject, a correspondent's From,
# a team's To list), and the email package's decoders cost ~50 us a value: the parsers
# below remember recent results. Bounded, and per process (each import worker has its own).
_MEMO = 4096


@functools.lru_cache(maxsize=_MEMO)
def _decode_encoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # any malformed encoded word or unknown charset
        return value


def parse_addresses(value: str | None) -> tuple[tuple[str, ...], bool]:
    """Lower-case addr-specs from an address header, and whether something did not parse."""
    if not value:
        return (), False
    original = value
    if '"' in value and "(" not in value and "\\" not in value:
        # Quoted display names ("Ng, Alice" <a@b>) are dropped so their commas cannot split
        # an address; a quote left over (a quoted local part) takes the slow path.
        value = _QUOTED_NAME_RE.sub("", value)
    # Encoded words may stay: RFC 2047 keeps ",", "<" and "@" out of them.
    if '"' in value or "(" in value:
        return _slow_addresses(original)
    # Fast path for the common shapes: a@b, Name <a@b>, groups, several of them.
    addrs = []
    for part in value.split(","):
        m = _ANGLE_RE.search(part)
        if m is not None:
            addr = m.group(1)
        else:
            addr = part
            if ":" in addr:  # "Team: a@b" starts a group
                addr = addr.rsplit(":", 1)[1]
            addr = addr.strip().rstrip(";").rstrip()  # "a@b;" ends one
            if not addr:
                continue  # an empty part, or an empty group ("undisclosed-recipients:;")
        if "@" in addr and " " not in addr and "<" not in addr and ">" not in addr:
            addrs.append(addr.lower())
        else:
            return _slow_addresses(original)
    return tuple(addrs), False


# The record builder's parse_addresses (results are immutable tuples, safe to share).
_addresses = functools.lru_cache(maxsize=_MEMO)(parse_addresses)
_NO_ADDRESSES = parse_addresses(None)  # what an absent or empty address header gives


def _slow_addresses(value: str) -> tuple[tuple[str, ...], bool]:
    try:
        pairs = getaddresses([value])
    except Exception:
        return (), True
    addrs = tuple(a.strip().lower() for _, a in pairs if "@" in a and " " not in a.strip())
    return addrs, not addrs and "@" in value


def _epoch_seconds(
    year: int, month: int, day: int, hh: int, mm: int, ss: int, offset: int
) -> int | None:
    """Seconds since the epoch for a wall-clock time at a UTC offset in seconds, or None
    when a field is out of range (31 Feb, 25:00, a +9900 offset: garbage, not a time)."""
    if not _MIN_YEAR <= year <= _MAX_YEAR or not 1 <= month <= 12:
        return None
    known = _MONTH_DAYS.get((year, month))
    if known is None:
        first = datetime.date(year, month, 1).toordinal() - _EPOCH_ORDINAL
        known = _MONTH_DAYS[(year, month)] = (first, calendar.monthrange(year, month)[1])
    first, length = known
    if not (1 <= day <= length and hh <= 23 and mm <= 59 and ss <= 60
            and -_MAX_OFFSET <= offset <= _MAX_OFFSET):
        return None
    return (first + day - 1) * 86400 + hh * 3600 + mm * 60 + ss - offset


def parse_date_ms(value: str | None) -> tuple[int | None, int | None]:
    """UTC epoch milliseconds and the original offset in minutes; (None, None) if unusable."""
    if not value:
        return None, None
    m = _DATE_RE.match(value)
    if m is not None and (month := _MONTHS.get(m.group(2).lower())) is not None:
        d, _, y, h, mi, sec, sign, oh, om = m.groups()
        day, year, hh, mm, ss = int(d), int(y), int(h), int(mi), int(sec) if sec else 0
        if om > "59":  # two digits, so a string comparison will do
            return None, None
        offset = (int(oh) * 3600 + int(om) * 60) * (-1 if sign == "-" else 1)
    else:
        # Anything else (zone names, two-digit years, no comma...): the standard library.
        try:
            parts = parsedate_tz(value)
        except Exception:
            return None, None
        if parts is None:
            return None, None
        year, month, day, hh, mm, ss = parts[:6]
        offset = parts[9] or 0
    seconds = _epoch_seconds(year, month, day, hh, mm, ss, offset)
    if seconds is None:
        return None, None
    return seconds * 1000, offset // 60


def _message_id(value: str | None) -> str | None:
    if not value:
        return None
    m = _MSGID_RE.search(value)
    if m:
        return m.group(1)
    value = value.strip().strip("<>").strip()
    return value if value and " " not in value else None


def parse_references(value: str | None) -> tuple[str, ...]:
    """Message-IDs in References. Tokens without "@" (seen in the wild: ``<yes>``) are
    dropped: a Message-ID always has one, and such junk would join unrelated threads."""
    if not value:
        return ()
    ids = [i for i in _MSGID_RE.findall(value) if "@" in i]
    return tuple(ids) if ids else tuple(v.strip("<>") for v in value.split() if "@" in v)


def _parent_id(value: str | None) -> str | None:
    """In-Reply-To: the first Message-ID-looking token (clients add junk around it)."""
    refs = parse_references(value)
    return refs[0] if refs else None


def automated_marker(fields: dict[str, str], from_addr: str | None) -> int:
    """docs/definitions.md, "Automated message": any one marker is enough. The code of the
    first marker found (``model.AUTOMATED_MARKERS``), 0 when there is none."""
    get = fields.get
    auto = get("auto-submitted")
    if auto is not None and auto.split(";", 1)[0].strip().lower() != "no":
        return AUTO_SUBMITTED
    if not _AUTO_PRESENT.isdisjoint(fields):
        return next(code for name, code in PRESENCE_MARKERS.items() if name in fields)
    precedence = get("precedence")
    if precedence is not None and precedence.strip().lower() in _AUTO_PRECEDENCE:
        return PRECEDENCE_MARKER
    if from_addr and _is_noreply(from_addr):
        return NOREPLY_MARKER
    ctype = get("content-type")
    if ctype is not None and _media_type(ctype) == "multipart/report":
        return REPORT_MARKER
    return 0


def is_automated(fields: dict[str, str], from_addr: str | None) -> bool:
    return automated_marker(fields, from_addr) != 0


@functools.lru_cache(maxsize=_MEMO)  # a correspondent writes again and again
def _is_noreply(addr: str) -> bool:
    return _NOREPLY_RE.match(addr.rsplit("@", 1)[0]) is not None


@functools.lru_cache(maxsize=256)  # a handful of distinct values in any mailbox
def _media_type(content_type: str) -> str:
    """``text/plain`` of ``Text/Plain; charset=UTF-8``."""
    return content_type.split(";", 1)[0].strip().lower()


def record_from_fields(
    pairs: Iterable[tuple[str, str]],
    *,
    server_time_ms: int | None = None,
    provider_thread_id: str | None = None,
    labels: Sequence[str] = (),
    keep: Iterable[str] = (),
    problems: int = 0,
) -> MessageRecord:
    """Build a record from (name, value) pairs; names in any case, first occurrence wins.

    ``keep`` names extra headers (any case) to store verbatim in ``record.extra``, for
    rules such as a form lead's ``lead_address = "header:X-Lead-Email"``.
    """
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name.lower(), value)
    return _record(fields, server_time_ms, provider_thread_id, labels, keep, problems)


def _record(
    fields: dict[str, str],
    server_time_ms: int | None,
    provider_thread_id: str | None,
    labels: Sequence[str],
    keep: Iterable[str],
    problems: int,
) -> MessageRecord:
    get = fields.get
    # Cc and Reply-To are mostly absent: no trip through the memo for what None parses to.
    value = get("from")
    from_list, bad_from = _addresses(value) if value else _NO_ADDRESSES
    value = get("to")
    to, bad_to = _addresses(value) if value else _NO_ADDRESSES
    value = get("cc")
    cc, bad_cc = _addresses(value) if value else _NO_ADDRESSES
    value = get("reply-to")
    reply_to, bad_rt = _addresses(value) if value else _NO_ADDRESSES
    if bad_from or bad_to or bad_cc or bad_rt:
        problems |= PROBLEM_BAD_ADDRESS
    from_addr = from_list[0] if from_list else None

    if server_time_ms is not None:
        time_ms, source = int(server_time_ms), TIME_SERVER
        offset = parse_date_ms(get("date"))[1]
    else:
        time_ms, offset = parse_date_ms(get("date"))
        if time_ms is not None:
            source = TIME_DATE
        else:
            received = get("received", "")
            stamp = received.rsplit(";", 1)[-1] if ";" in received else None
            time_ms, offset = parse_date_ms(stamp)
            source = TIME_RECEIVED if time_ms is not None else TIME_NONE
    if time_ms is None:
        problems |= PROBLEM_NO_TIME

    thread = provider_thread_id or get("x-gm-thrid") or None
    gmail_labels = get("x-gmail-labels")
    if gmail_labels is not None:
        labels = [*labels, *(lb.strip() for lb in decode_words(gmail_labels).split(","))]
    ctype = get("content-type")
    subject = get("subject")
    message_id = _message_id(get("message-id"))
    # Positional, in the order of MessageRecord's fields: less than half the cost of keywords.
    record = MessageRecord(
        message_id,
        from_addr,
        to,
        cc,
        reply_to,
        decode_words(subject) if subject is not None else None,
        time_ms,
        offset,
        source,
        _parent_id(get("in-reply-to")),
        parse_references(get("references")),
        automated_marker(fields, from_addr),
        (_media_type(ctype) or None) if ctype else None,
        thread.strip() if thread else None,
        tuple(sorted({lb for lb in labels if lb})) if labels else (),
        {k.lower(): fields[k.lower()] for k in keep if k.lower() in fields} if keep else {},
        problems,
    )
    if message_id is None:
        record.fallback_key = hashlib.sha1(
            "\x1f".join(
                get(h, "") for h in ("from", "date", "subject", "to", "received")
            ).encode("utf-8", "surrogatepass")
        ).hexdigest()
    return record


def parse_header_block(
    block: bytes,
    *,
    server_time_ms: int | None = None,
    provider_thread_id: str | None = None,
    labels: Sequence[str] = (),
    keep: Iterable[str] = (),
    problems: int = 0,
    find_end: bool = True,
) -> MessageRecord:
    """Parse the raw header bytes of one message: anything after the blank line ending the
    header block is ignored. ``find_end=False`` when the caller has already cut the block
    there (the file importer has found the blank line anyway)."""
    if find_end:
        end = header_block_end(block)
        if end >= 0:
            block = block[:end]
    if b"\0" in block:  # NUL bytes are never meaningful in a header; SQLite text hates them
        block = block.replace(b"\0", b"")
    keep = tuple(keep)
    wanted, wanted_b, spellings = (
        _wanted_sets(keep) if keep else (_WANTED, _WANTED_BYTES, _SPELLINGS)
    )
    fields = _field_dict(block, wanted, wanted_b, spellings)
    if not fields and block.strip():
        problems |= PROBLEM_MALFORMED
    return _record(fields, server_time_ms, provider_thread_id, labels, keep, problems)


@functools.lru_cache(maxsize=32)
def _wanted_sets(
    keep: tuple[str, ...],
) -> tuple[frozenset[str], frozenset[bytes], _Spellings]:
    wanted = _WANTED | {k.lower() for k in keep}
    return wanted, frozenset(w.encode("utf-8") for w in wanted), {}
