"""Parse raw header blocks into MessageRecords: fast, and never raising on bad input.

Every connector ends here: files hand over the raw header bytes, IMAP the bytes of
``BODY.PEEK[HEADER.FIELDS (...)]``, Gmail a list of (name, value) pairs. The parser
keeps only the fields the metrics need (brief, section 2) and decides whether a
message is automated (section 3).
"""

from __future__ import annotations

import calendar
import hashlib
import re
from collections.abc import Iterable, Sequence
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_tz

from replytime.model import (
    PROBLEM_BAD_ADDRESS,
    PROBLEM_MALFORMED,
    PROBLEM_NO_TIME,
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

# A header field: name, colon, value with its folded continuation lines.
_FIELD_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.M)
_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_MSGID_RE = re.compile(r"<([^<>\s]+)>")
_ANGLE_RE = re.compile(r"<\s*([^<>\s]*@[^<>\s]*)\s*>")
_NOREPLY_RE = re.compile(
    r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_.]?daemon|postmaster)(?:[+].*)?$"
)
_AUTO_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})
_AUTO_PRESENT = ("x-autoreply", "x-autorespond", "x-auto-response-suppress", "list-id",
                 "list-unsubscribe")
_MIN_YEAR, _MAX_YEAR = 1970, 2200


def header_block_end(data: bytes) -> int:
    """Offset just past the blank line ending the header block, or -1 when not in ``data``."""
    if data.startswith((b"\n", b"\r\n")):
        return 1 if data[:1] == b"\n" else 2
    lf = data.find(b"\n\n")
    crlf = data.find(b"\r\n\r\n")
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


def split_fields(block: bytes, wanted: frozenset[str] = _WANTED) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) for each wanted field, in order of appearance."""
    out: list[tuple[str, str]] = []
    for m in _FIELD_RE.finditer(block):
        name = m.group(1).decode("ascii").lower()
        if name in wanted:
            out.append((name, _FOLD_RE.sub("", _text(m.group(2))).strip()))
    return out


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; bad ones are left as they are."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # any malformed encoded word or unknown charset
        return value


def parse_addresses(value: str | None) -> tuple[tuple[str, ...], bool]:
    """Lower-case addr-specs from an address header, and whether something did not parse."""
    if not value:
        return (), False
    if '"' not in value and "(" not in value and "=?" not in value:
        # Fast path for the common shapes: a@b, Name <a@b>, several of them.
        addrs = []
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            m = _ANGLE_RE.search(part)
            addr = m.group(1) if m else part
            if "@" in addr and " " not in addr:
                addrs.append(addr.lower())
            elif m is None and part.endswith(";"):
                continue  # an empty group such as "undisclosed-recipients:;"
            elif not (m is None and ":" in part):
                return _slow_addresses(value)
        return tuple(addrs), False
    return _slow_addresses(value)


def _slow_addresses(value: str) -> tuple[tuple[str, ...], bool]:
    try:
        pairs = getaddresses([value])
    except Exception:
        return (), True
    addrs = tuple(a.strip().lower() for _, a in pairs if "@" in a and " " not in a.strip())
    return addrs, not addrs and "@" in value


def parse_date_ms(value: str | None) -> tuple[int | None, int | None]:
    """UTC epoch milliseconds and the original offset in minutes; (None, None) if unusable."""
    if not value:
        return None, None
    try:
        parts = parsedate_tz(value)
    except Exception:
        return None, None
    if parts is None or not (_MIN_YEAR <= parts[0] <= _MAX_YEAR):
        return None, None
    offset = parts[9] or 0
    try:
        seconds = calendar.timegm(parts[:6]) - offset  # type: ignore[arg-type]
    except (ValueError, OverflowError):
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


def is_automated(fields: dict[str, str], from_addr: str | None) -> bool:
    """Section 3, "automated message": any one marker is enough."""
    auto = fields.get("auto-submitted")
    if auto is not None and auto.split(";", 1)[0].strip().lower() != "no":
        return True
    if any(h in fields for h in _AUTO_PRESENT):
        return True
    if fields.get("precedence", "").strip().lower() in _AUTO_PRECEDENCE:
        return True
    if from_addr and _NOREPLY_RE.match(from_addr.rsplit("@", 1)[0]):
        return True
    ctype = fields.get("content-type", "")
    return ctype.split(";", 1)[0].strip().lower() == "multipart/report"


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

    from_list, bad_from = parse_addresses(fields.get("from"))
    to, bad_to = parse_addresses(fields.get("to"))
    cc, bad_cc = parse_addresses(fields.get("cc"))
    reply_to, bad_rt = parse_addresses(fields.get("reply-to"))
    if bad_from or bad_to or bad_cc or bad_rt:
        problems |= PROBLEM_BAD_ADDRESS
    from_addr = from_list[0] if from_list else None

    time_ms, offset, source = None, None, TIME_NONE
    if server_time_ms is not None:
        time_ms, source = int(server_time_ms), TIME_SERVER
        offset = parse_date_ms(fields.get("date"))[1]
    else:
        time_ms, offset = parse_date_ms(fields.get("date"))
        if time_ms is not None:
            source = TIME_DATE
        else:
            received = fields.get("received", "")
            stamp = received.rsplit(";", 1)[-1] if ";" in received else None
            time_ms, offset = parse_date_ms(stamp)
            source = TIME_RECEIVED if time_ms is not None else TIME_NONE
    if time_ms is None:
        problems |= PROBLEM_NO_TIME

    thread = provider_thread_id or fields.get("x-gm-thrid") or None
    all_labels = list(labels)
    if "x-gmail-labels" in fields:
        all_labels += [lb.strip() for lb in decode_words(fields["x-gmail-labels"]).split(",")]
    subject = fields.get("subject")
    message_id = _message_id(fields.get("message-id"))
    record = MessageRecord(
        message_id=message_id,
        from_addr=from_addr,
        to_addrs=to,
        cc_addrs=cc,
        reply_to=reply_to,
        subject=decode_words(subject) if subject is not None else None,
        time_ms=time_ms,
        time_offset=offset,
        time_source=source,
        in_reply_to=_parent_id(fields.get("in-reply-to")),
        references=parse_references(fields.get("references")),
        automated=is_automated(fields, from_addr),
        content_type=(fields.get("content-type", "").split(";", 1)[0].strip().lower() or None),
        provider_thread_id=thread.strip() if thread else None,
        labels=tuple(sorted({lb for lb in all_labels if lb})),
        extra={k.lower(): fields[k.lower()] for k in keep if k.lower() in fields},
        problems=problems,
    )
    if message_id is None:
        record.fallback_key = hashlib.sha1(
            "\x1f".join(
                fields.get(h, "") for h in ("from", "date", "subject", "to", "received")
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
) -> MessageRecord:
    """Parse the raw header bytes of one message (anything after a blank line is ignored)."""
    end = header_block_end(block)
    if end >= 0:
        block = block[:end]
    keep = tuple(keep)
    wanted = _WANTED | {k.lower() for k in keep} if keep else _WANTED
    pairs = split_fields(block, wanted)
    if not pairs and block.strip():
        problems |= PROBLEM_MALFORMED
    return record_from_fields(
        pairs,
        server_time_ms=server_time_ms,
        provider_thread_id=provider_thread_id,
        labels=labels,
        keep=keep,
        problems=problems,
    )
