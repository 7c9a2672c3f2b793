"""Business time (docs/definitions.md, "Business time"): overlap of [lead, reply] with a
schedule's working hours.

The method is a cumulative-time lookup rather than stepping through time: a schedule is
expanded once into sorted, disjoint working intervals in UTC (one Python loop over the
*days* in range, a few hundred per year), and W(t) = working milliseconds before t is read
for every timestamp with one binary search (``np.interp`` over the interval edges, i.e. a
searchsorted plus the within-interval offset). Business time is W(end) - W(start).

Wall-clock conversion (deterministic, via zoneinfo with fold=0 and plain datetime
arithmetic, which in Python is wall-clock arithmetic for aware datetimes):

- "24:00" is midnight starting the next day (``day 00:00 + 1440 minutes``).
- A wall time in a spring-forward gap (e.g. 02:30 on 2026-03-08 in New York) is read
  with the offset in force *before* the change (PEP 495, fold=0), so 02:30 EST lands at
  03:30 EDT. An interval 01:00-03:00 that day is therefore 1 h long, 02:30-04:00 is 30 min
  (03:30-04:00 EDT), 02:15-02:45 becomes 03:15-03:45 EDT and 02:30-03:00 is empty.
- An ambiguous wall time in a fall-back hour is its *first* occurrence (daylight time),
  so 01:00-03:00 on 2026-11-01 in New York lasts 3 h and a 00:00-24:00 day lasts 25 h.
- Should that make two intervals overlap or one run backwards, the union of the converted
  intervals is what counts (backwards intervals are empty); nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from replytime.config import Schedule, holiday_calendar

__all__ = [
    "business_seconds",
    "business_seconds_by",
    "holiday_dates",
    "schedule_key",
    "working_intervals",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_DAY_MS = 86_400_000

# (name, timezone, days as sorted tuple, holidays, dates_off): everything intervals depend on.
ScheduleKey = tuple[str, str, tuple[tuple[int, tuple[tuple[int, int], ...]], ...],
                    tuple[str, ...], tuple[date, ...]]


def schedule_key(schedule: Schedule) -> ScheduleKey:
    """A hashable stand-in for a Schedule (which is frozen but holds a dict)."""
    return (
        schedule.name,
        schedule.timezone,
        tuple(sorted((int(d), tuple(spans)) for d, spans in schedule.days.items())),
        tuple(schedule.holidays),
        tuple(sorted(schedule.dates_off)),
    )


@lru_cache(maxsize=256)
def holiday_dates(code: str, years: tuple[int, ...], key: str = "holidays") -> frozenset[date]:
    """Dates of the public holidays (observed days included) of a "US" / "US-CA" code; an
    unknown code is a ``ConfigError`` at ``key`` (codes are not checked when the config is
    loaded: ``Config.check_holidays``)."""
    return frozenset(holiday_calendar(code, years, key).keys())


def _to_ms(local: datetime) -> int:
    # Aware subtraction goes through utcoffset(), which honours fold=0 (see module doc).
    return (local - _EPOCH) // _MS


@lru_cache(maxsize=128)
def _intervals(key: ScheduleKey, first_day: date, last_day: date) -> tuple[np.ndarray, np.ndarray]:
    _name, tz_name, days_t, codes, dates_off = key
    tz = ZoneInfo(tz_name)
    days = dict(days_t)
    years = tuple(range(first_day.year, last_day.year + 1))
    off: set[date] = set(dates_off)
    for code in codes:
        off |= holiday_dates(code, years, f"schedules.{_name}.holidays")

    starts: list[int] = []
    ends: list[int] = []
    day = first_day
    one_day = timedelta(days=1)
    while day <= last_day:  # a loop over days, not rows: ~365 per year
        spans = days.get(day.weekday())
        if spans and day not in off:
            midnight = datetime.combine(day, time(), tzinfo=tz)
            for s, e in spans:
                starts.append(_to_ms(midnight + timedelta(minutes=s)))
                ends.append(_to_ms(midnight + timedelta(minutes=e)))
        day += one_day

    s_arr = np.asarray(starts, dtype=np.int64)
    e_arr = np.asarray(ends, dtype=np.int64)
    if s_arr.size:
        # Union of possibly overlapping/backwards intervals (DST edge cases): sort by start,
        # each piece runs from max(start, end of everything before) to the running max end.
        order = np.argsort(s_arr, kind="stable")
        s_arr, e_arr = s_arr[order], e_arr[order]
        run_end = np.maximum.accumulate(e_arr)
        prev_end = np.concatenate(([np.iinfo(np.int64).min], run_end[:-1]))
        s_arr = np.maximum(s_arr, prev_end)
        keep = run_end > s_arr
        s_arr, e_arr = s_arr[keep], run_end[keep]
    s_arr.setflags(write=False)  # shared through the cache
    e_arr.setflags(write=False)
    return s_arr, e_arr


def working_intervals(
    schedule: Schedule, first_day: date, last_day: date
) -> tuple[np.ndarray, np.ndarray]:
    """Working intervals of the local days first_day..last_day (inclusive) as UTC epoch ms.

    Returns (starts, ends), int64, sorted, disjoint, non-empty, half-open [start, end).
    Weekdays without intervals, holidays and dates_off are left out. Arrays are cached and
    read-only.
    """
    return _intervals(schedule_key(schedule), first_day, last_day)


@lru_cache(maxsize=128)
def _knots(key: ScheduleKey, first_year: int, last_year: int) -> tuple[np.ndarray, np.ndarray]:
    """W(t), the working ms before t, is piecewise linear (slope 1 inside intervals, 0
    between): its knots are the interval edges, so np.interp evaluates it for a whole array
    in one C loop (binary search + interpolation; NaN stays NaN; flat before and after)."""
    s, e = _intervals(key, date(first_year, 1, 1), date(last_year, 12, 31))
    if s.size == 0:  # no working time at all: W is 0 everywhere
        s, e = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    lengths = (e - s).astype(np.float64)
    before = np.concatenate(([0.0], np.cumsum(lengths)[:-1]))
    x = np.column_stack((s, e)).ravel().astype(np.float64)
    w = np.column_stack((before, before + lengths)).ravel()
    # Adjacent intervals (an end equal to the next start, e.g. "24:00" then "00:00") repeat a
    # knot with the same W; drop the repeat so x is strictly increasing for np.interp.
    keep = np.concatenate(([True], np.diff(x) > 0))
    x, w = x[keep], w[keep]
    x.setflags(write=False)  # shared through the cache
    w.setflags(write=False)
    return x, w


def _as_ms(values: Any) -> np.ndarray:
    """int64/float64 arrays, lists or Series (nullable ones too) -> float64 ms, NaN = missing."""
    if isinstance(values, pd.Series | pd.Index):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(values, dtype=np.float64)


def _utc_date(ms: float) -> date:
    return (_EPOCH + timedelta(milliseconds=ms)).date()


def _finite_range(start: np.ndarray, end: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    """Smallest and largest finite time in either array; (None, None) if there is none."""
    # fmin/fmax skip NaN without the all-NaN warning of nanmin; infinities need a mask.
    lo = float(np.fmin(np.fmin.reduce(start, axis=None), np.fmin.reduce(end, axis=None)))
    hi = float(np.fmax(np.fmax.reduce(start, axis=None), np.fmax.reduce(end, axis=None)))
    if np.isfinite(lo) and np.isfinite(hi):
        return lo, hi
    finite = np.concatenate((start[np.isfinite(start)], end[np.isfinite(end)]))
    if finite.size == 0:
        return None, None
    return float(finite.min()), float(finite.max())


def business_seconds(schedule: Schedule | None, start_ms: Any, end_ms: Any) -> np.ndarray:
    """Seconds of working time inside [start, end] for each pair of UTC epoch ms.

    ``schedule=None`` means calendar time. NaN in either input gives NaN; end < start
    gives 0 (negative clock skew is the caller's to flag).
    """
    start = _as_ms(start_ms)
    end = _as_ms(end_ms)
    start, end = np.broadcast_arrays(start, end)
    if schedule is None:
        out = end - start
    elif start.size:
        lo, hi = _finite_range(start, end)
        if lo is None:
            return np.full(start.shape, np.nan)
        # Whole UTC years around the data (+-1 day covers any zone offset): a stable cache
        # key, so repeated calls over similar data reuse the intervals.
        x, w = _knots(
            schedule_key(schedule), _utc_date(lo - _DAY_MS).year, _utc_date(hi + _DAY_MS).year
        )
        out = np.interp(end, x, w) - np.interp(start, x, w)
        out[np.isnan(start) | np.isnan(end)] = np.nan  # np.interp maps NaN to 0 on one knot
    else:
        out = np.empty(start.shape)
    out = np.maximum(out, 0.0)  # NaN survives np.maximum
    return out / 1000.0


def business_seconds_by(
    schedules: Mapping[Hashable, Schedule | None],
    keys: Iterable[Hashable] | np.ndarray | pd.Series,
    start_ms: Any,
    end_ms: Any,
    default: Schedule | None = None,
) -> np.ndarray:
    """business_seconds with a schedule chosen per row by ``keys`` (e.g. responder rep).

    Keys missing from ``schedules`` (or missing values) use ``default``. Rows are grouped
    by distinct schedule, so the loop runs once per schedule, not per row.
    """
    start = _as_ms(start_ms)
    end = _as_ms(end_ms)
    # Series/Categorical as they are (categoricals factorize almost for free), else an array.
    if not isinstance(keys, pd.Series | pd.Index | pd.Categorical):
        keys = np.asarray(list(keys) if not isinstance(keys, np.ndarray) else keys)
    codes, uniques = pd.factorize(keys, use_na_sentinel=True)
    codes = np.asarray(codes)
    if len(codes) != len(start) or len(start) != len(end):
        raise ValueError("keys, start_ms and end_ms must have the same length")

    # Distinct schedules (several keys often share one): group id per unique key, and one
    # extra slot (index -1 after appending) for missing keys.
    group_of: dict[Any, int] = {}
    group_sched: list[Schedule | None] = []
    key_group = np.empty(len(uniques) + 1, dtype=np.int64)
    for i, k in enumerate([*list(uniques), None]):
        sched = schedules.get(k, default) if k is not None else default
        gkey = None if sched is None else schedule_key(sched)
        if gkey not in group_of:
            group_of[gkey] = len(group_sched)
            group_sched.append(sched)
        key_group[i] = group_of[gkey]
    row_group = key_group[codes]  # codes == -1 picks the missing-key slot

    out = np.empty(len(start), dtype=np.float64)
    for g, sched in enumerate(group_sched):
        rows = np.flatnonzero(row_group == g)
        if rows.size:
            out[rows] = business_seconds(sched, start[rows], end[rows])
    return out
