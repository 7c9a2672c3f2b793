"""The one record every connector produces and the cache stores: a message's headers, no body."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Where a message's time came from, best first (docs/definitions.md, "Message time").
TIME_SERVER = 3  # Gmail internalDate, IMAP INTERNALDATE
TIME_DATE = 2  # the Date header
TIME_RECEIVED = 1  # the newest Received header
TIME_NONE = 0  # no usable time: kept, flagged, left out of time-based metrics

# Bits of MessageRecord.problems, counted by `replytime status`.
PROBLEM_MALFORMED = 1  # header block could not be split cleanly
PROBLEM_NO_TIME = 2
PROBLEM_BAD_ADDRESS = 4  # an address header that did not parse
PROBLEM_TRUNCATED = 8  # the header block ended without a blank line


@dataclass(slots=True)
class MessageRecord:
    """Headers of one message, normalised. Addresses are lower-case addr-specs."""

    message_id: str | None = None  # RFC 5322 Message-ID without angle brackets
    from_addr: str | None = None
    to_addrs: tuple[str, ...] = ()
    cc_addrs: tuple[str, ...] = ()
    reply_to: tuple[str, ...] = ()
    subject: str | None = None
    time_ms: int | None = None  # UTC epoch milliseconds
    time_offset: int | None = None  # the original UTC offset in minutes, when known
    time_source: int = TIME_NONE
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    automated: int = 0  # 0: written by a person; else the first marker found (AUTOMATED_MARKERS)
    content_type: str | None = None
    provider_thread_id: str | None = None
    labels: tuple[str, ...] = ()
    # Headers kept verbatim for rules configured later (List-Id, Auto-Submitted, X-Lead-Email...).
    extra: dict[str, str] = field(default_factory=dict)
    problems: int = 0
    fallback_key: str | None = None  # dedup key for messages without a Message-ID

    @property
    def key(self) -> str:
        """The de-duplication key: the Message-ID, else a digest of stable headers."""
        if self.message_id:
            return self.message_id
        return "nomid:" + (self.fallback_key or "")


# Why a message is automated (docs/definitions.md, "Automated message"): the code kept in
# ``messages.automated`` (0 = not automated), so ``replytime explain`` can name the marker.
AUTOMATED_LEGACY = 1  # marked by a version that kept no marker
AUTO_SUBMITTED = 2
AUTOMATED_MARKERS = {
    AUTOMATED_LEGACY: "automated (marker not recorded by the version that imported it)",
    AUTO_SUBMITTED: "Auto-Submitted header (not 'no')",
    3: "X-Autoreply header",
    4: "X-Autorespond header",
    5: "X-Auto-Response-Suppress header",
    6: "List-Id header",
    7: "List-Unsubscribe header",
    8: "Precedence: bulk, junk, list or auto_reply",
    9: "no-reply, mailer-daemon or postmaster sender",
    10: "Content-Type multipart/report (a delivery or read report)",
}
#: Header-presence markers, in the order they are checked, with their codes.
PRESENCE_MARKERS = {"x-autoreply": 3, "x-autorespond": 4, "x-auto-response-suppress": 5,
                    "list-id": 6, "list-unsubscribe": 7}
PRECEDENCE_MARKER, NOREPLY_MARKER, REPORT_MARKER = 8, 9, 10


# -- the stored shape ------------------------------------------------------------------
MESSAGE_COLUMNS = (
    "msg_key", "message_id", "from_addr", "to_addrs", "cc_addrs", "reply_to", "subject",
    "time_ms", "time_offset", "time_source", "in_reply_to", "refs", "automated",
    "content_type", "provider_thread_id", "extra", "problems",
)


# A message as the writer binds it: (location, values of MESSAGE_COLUMNS, labels joined with
# commas). Connectors that parse in worker processes build these there: plain tuples of
# strings and ints cost the single writer about a fifth of what unpickling and rebuilding a
# MessageRecord does (measured: 0.15 s against 0.85 s per 100,000 messages).
StoredMessage = tuple[str, tuple[Any, ...], str]


def stored_message(location: str, r: MessageRecord) -> StoredMessage:
    return (location, message_row(r), ",".join(r.labels))


def message_row(r: MessageRecord) -> tuple[Any, ...]:
    """A record as the values of ``MESSAGE_COLUMNS``."""
    return (
        r.key,
        r.message_id,
        r.from_addr,
        ",".join(r.to_addrs),
        ",".join(r.cc_addrs),
        ",".join(r.reply_to),
        r.subject,
        r.time_ms,
        r.time_offset,
        r.time_source,
        r.in_reply_to,
        " ".join(r.references),
        int(r.automated),
        r.content_type,
        r.provider_thread_id,
        json.dumps(r.extra, sort_keys=True) if r.extra else "{}",
        r.problems,
    )
