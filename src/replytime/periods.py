"""Durations ("1h30m") and report periods ("7d", "last-week", ISO dates) in a report zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from replytime.errors import UsageError

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)")
_UNIT_S = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``90s``, ``15m``, ``1h30m``, ``14d``, ``2w``; a bare
    number is seconds. Raises ValueError with a readable message."""
    s = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+", s):
        return int(s)
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 15m, 1h30m, 14d, 2w)")
    return int(round(total))


def format_duration(seconds: float | None) -> str:
    """Human form for tables: ``45s``, ``12m``, ``1h 05m``, ``2d 03h``."""
    if seconds is None or seconds != seconds:  # None or NaN
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def short_duration(seconds: int) -> str:
    """Compact label for a round duration: ``90s``, ``15m``, ``4h``, ``1h30m``."""
    s = int(seconds)
    if s % 3600 == 0 and s:
        return f"{s // 3600}h"
    if s % 60 == 0 and s:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m:02d}m" if h else f"{m}m"
    return f"{s}s"


def zone(name: str | None) -> ZoneInfo | timezone:
    """The named IANA zone, or the machine's local zone when None."""
    if name:
        return ZoneInfo(name)
    local = datetime.now().astimezone().tzinfo
    key = getattr(local, "key", None)
    return ZoneInfo(key) if key else local  # type: ignore[return-value]


@dataclass(frozen=True)
class Period:
    """Half-open [since, until) in UTC epoch milliseconds; None means unbounded."""

    since_ms: int | None
    until_ms: int | None

    def label(self, tz: ZoneInfo | timezone) -> str:
        return f"{local_minute(self.since_ms, tz)} – {local_minute(self.until_ms, tz)}"


def local_minute(ms: int | None, tz: ZoneInfo | timezone) -> str:
    """``2026-11-02 09:00`` in ``tz``; ``…`` for an open end."""
    if ms is None:
        return "…"
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M")


def check_period(period: Period, as_of_ms: int, tz: ZoneInfo | timezone,
                 flag: str = "--since/--until") -> None:
    """Refuse a period that cannot hold a lead (docs/definitions.md, "Periods"): empty or
    inverted, or starting after the as-of time, when none of its leads can be known yet."""
    since, until = period.since_ms, period.until_ms
    if since is not None and since > as_of_ms:
        raise UsageError(f"{flag}: the period starts at {local_minute(since, tz)}, after the "
                         f"as-of time {local_minute(as_of_ms, tz)}: no lead of it can be known "
                         "yet (--as-of looks back)")
    if since is not None and until is not None and since >= until:
        raise UsageError(f"{flag}: the period is empty: {local_minute(since, tz)} is not "
                         f"before {local_minute(until, tz)}")


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _midnight(d: date, tz: ZoneInfo | timezone) -> datetime:
    return datetime.combine(d, time(0), tzinfo=tz)


def parse_instant(text: str, tz: ZoneInfo | timezone, now: datetime) -> datetime:
    """An instant: ``now``, ``today``, an ISO date (midnight in ``tz``), an ISO date-time
    (``tz`` when it has no offset), ``last-week`` (its start), or ``7d``/``4w`` ago."""
    s = text.strip().lower()
    local_now = now.astimezone(tz)
    if s == "now":
        return now
    if s == "today":
        return _midnight(local_now.date(), tz)
    if s == "yesterday":
        return _midnight(local_now.date() - timedelta(days=1), tz)
    named = _named_range(s, tz, now)
    if named:
        return named[0]
    if re.fullmatch(r"\d+(\.\d+)?[wdhms]([\d.]+[wdhms])*", s):
        return now - timedelta(seconds=parse_duration(s))
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
            return _midnight(date.fromisoformat(s), tz)
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date or period (examples: 2026-11-02, 7d, 4w, last-week, "
            "this-month, 2026-11-02T09:00)"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=tz)


def _named_range(
    s: str, tz: ZoneInfo | timezone, now: datetime
) -> tuple[datetime, datetime] | None:
    today = now.astimezone(tz).date()
    monday = today - timedelta(days=today.weekday())
    first = today.replace(day=1)
    prev_first = (first - timedelta(days=1)).replace(day=1)
    next_first = (first + timedelta(days=32)).replace(day=1)
    ranges = {
        "this-week": (monday, monday + timedelta(days=7)),
        "last-week": (monday - timedelta(days=7), monday),
        "this-month": (first, next_first),
        "last-month": (prev_first, first),
    }
    if s not in ranges:
        return None
    a, b = ranges[s]
    return _midnight(a, tz), _midnight(b, tz)


def parse_period(
    since: str | None, until: str | None, tz: ZoneInfo | timezone, now: datetime
) -> Period:
    """Resolve --since/--until. A named range given as --since alone (``last-week``) also
    sets its end, unless --until is given."""
    since_dt = until_dt = None
    if since:
        named = _named_range(since.strip().lower(), tz, now)
        if named:
            since_dt, until_dt = named
        else:
            since_dt = parse_instant(since, tz, now)
    if until:
        named = _named_range(until.strip().lower(), tz, now)
        until_dt = named[1] if named else parse_instant(until, tz, now)
    return Period(
        _ms(since_dt) if since_dt else None,
        _ms(until_dt) if until_dt else None,
    )


def utc_now() -> datetime:
    return datetime.now(UTC)
