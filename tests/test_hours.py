"""Business time (docs/definitions.md): exact seconds for the worked examples, DST, holidays,
zones, and agreement with an independent minute-by-minute reference on random pairs."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import holidays
import numpy as np
import pandas as pd
import pytest

from replytime.analysis.hours import (
    business_seconds,
    business_seconds_by,
    schedule_key,
    working_intervals,
)
from replytime.config import WEEKDAYS, Schedule, parse_schedule

H = 3600
M = 60
WORKDAYS = WEEKDAYS[:5]


def sched(tz: str, days: dict[str, list[str]] | None = None, **extra: object) -> Schedule:
    """A schedule through the real config parser; default Mon-Fri 09:00-17:00."""
    days = days if days is not None else {d: ["09:00-17:00"] for d in WORKDAYS}
    return parse_schedule("t", {"timezone": tz, **days, **extra})


def ms(local: str, tz: str = "UTC") -> float:
    """UTC epoch ms of a wall-clock time in tz (fold=0, as the module documents)."""
    dt = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(tz))
    return round(dt.timestamp() * 1000)


def bs(schedule: Schedule | None, pairs: list[tuple[str, str]], tz: str) -> list[float]:
    start = np.array([ms(a, tz) for a, _ in pairs], dtype=np.int64)
    end = np.array([ms(b, tz) for _, b in pairs], dtype=np.int64)
    return business_seconds(schedule, start, end).tolist()


# -- the worked examples of docs/definitions.md ----------------------------------------------
# 2026-11-02 is a Monday (after every 2026 DST change in these zones); 11-06 a Friday.
WORKED = [
    # lead, reply, calendar s, business s
    ("2026-11-02 08:30", "2026-11-02 09:15", 45 * M, 15 * M),
    ("2026-11-02 16:30", "2026-11-03 10:30", 18 * H, 2 * H),
    ("2026-11-02 20:00", "2026-11-03 09:15", 13 * H + 15 * M, 15 * M),
    ("2026-11-02 16:00", "2026-11-02 18:27", 2 * H + 27 * M, 1 * H),
    ("2026-11-02 18:00", "2026-11-02 18:27", 27 * M, 0),
    ("2026-11-06 16:30", "2026-11-09 09:30", 65 * H, 1 * H),
]
HOLIDAY_ROW = ("2026-11-02 10:00", "2026-11-03 09:30", 23 * H + 30 * M, 30 * M)
ZONES = ["America/New_York", "Asia/Tokyo", "Europe/Berlin", "UTC"]


@pytest.mark.parametrize("tz", ZONES)
def test_worked_examples(tz: str) -> None:
    pairs = [(a, b) for a, b, _, _ in WORKED]
    assert bs(None, pairs, tz) == [float(c) for _, _, c, _ in WORKED]
    assert bs(sched(tz), pairs, tz) == [float(b) for _, _, _, b in WORKED]


@pytest.mark.parametrize("tz", ZONES)
def test_worked_example_holiday_via_dates_off(tz: str) -> None:
    lead, reply, calendar, business = HOLIDAY_ROW
    assert bs(None, [(lead, reply)], tz) == [calendar]
    assert bs(sched(tz, dates_off=["2026-11-02"]), [(lead, reply)], tz) == [business]
    # Without the day off it is Mon 10:00-17:00 plus 30 minutes on Tuesday.
    assert bs(sched(tz), [(lead, reply)], tz) == [7 * H + 30 * M]


def test_worked_example_holiday_via_country_code() -> None:
    tz = "America/New_York"
    pair = [("2026-09-07 10:00", "2026-09-08 09:30")]  # Labor Day, a Monday
    assert date(2026, 9, 7) in holidays.country_holidays("US", years=2026)
    assert bs(None, pair, tz) == [23 * H + 30 * M]
    assert bs(sched(tz, holidays=["US"]), pair, tz) == [30 * M]
    assert bs(sched(tz), pair, tz) == [7 * H + 30 * M]


def test_holiday_on_a_friday() -> None:
    tz = "America/New_York"
    pair = [("2026-12-24 16:00", "2026-12-28 10:00")]  # Christmas 2026 is a Friday
    assert bs(sched(tz, holidays=["US"]), pair, tz) == [2 * H]
    assert bs(sched(tz, dates_off=["2026-12-25"]), pair, tz) == [2 * H]
    assert bs(sched(tz), pair, tz) == [10 * H]
    # A subdivision code resolves too: Bavaria keeps 2026-01-06 (Epiphany), Berlin does not.
    pair = [("2026-01-05 16:00", "2026-01-07 10:00")]
    assert bs(sched("Europe/Berlin", holidays=["DE-BY"]), pair, "Europe/Berlin") == [2 * H]
    assert bs(sched("Europe/Berlin", holidays=["DE-BE"]), pair, "Europe/Berlin") == [10 * H]


def test_weekends_and_overnight_gaps() -> None:
    tz = "America/New_York"
    pairs = [
        ("2026-11-07 10:00", "2026-11-08 15:00"),  # Sat -> Sun
        ("2026-11-06 17:00", "2026-11-09 09:00"),  # Fri close -> Mon open
        ("2026-11-07 12:00", "2026-11-09 12:00"),  # Sat -> Mon noon
        ("2026-11-02 17:00", "2026-11-03 09:00"),  # closing -> opening
        ("2026-11-02 12:00", "2026-11-04 12:00"),  # two nights
        ("2026-11-02 08:59:30.500", "2026-11-02 09:00:10"),  # sub-minute precision
        ("2026-11-02 09:00", "2026-11-16 09:00"),  # two full weeks
    ]
    assert bs(sched(tz), pairs, tz) == [0, 0, 3 * H, 0, 16 * H, 10, 80 * H]


def test_several_intervals_per_day() -> None:
    tz = "America/Chicago"
    s = sched(tz, {d: ["09:00-12:00", "13:00-17:00"] for d in WORKDAYS})
    pairs = [
        ("2026-11-02 11:00", "2026-11-02 14:00"),
        ("2026-11-02 12:15", "2026-11-02 12:45"),  # lunch
        ("2026-11-02 08:00", "2026-11-02 18:00"),
        ("2026-11-02 12:30", "2026-11-03 09:30"),
        ("2026-11-02 12:00", "2026-11-02 13:00"),
    ]
    assert bs(s, pairs, tz) == [2 * H, 0, 7 * H, 4 * H + 30 * M, 0]


def test_rep_zone_differs_from_utc_input() -> None:
    s = sched("Asia/Tokyo")  # JST = UTC+9, no DST
    pairs = [
        ("2026-11-02 00:00", "2026-11-02 08:00"),  # Mon 09:00-17:00 JST
        ("2026-11-01 23:00", "2026-11-02 01:00"),  # Mon 08:00-10:00 JST
        ("2026-11-06 07:00", "2026-11-06 12:00"),  # Fri 16:00 -> 21:00 JST
        ("2026-11-08 23:30", "2026-11-09 00:30"),  # Sunday in UTC, Monday in Tokyo
        ("2026-11-02 09:00", "2026-11-02 15:00"),  # Monday in UTC, night in Tokyo
    ]
    assert bs(s, pairs, "UTC") == [8 * H, 1 * H, 1 * H, 30 * M, 0]


# -- DST in New York: 2026-03-08 springs forward, 2026-11-01 falls back (both Sundays) --
NY = "America/New_York"


def test_dst_whole_day_is_23h_and_25h() -> None:
    s = sched(NY, {"sunday": ["00:00-24:00"]})
    pairs = [
        ("2026-03-07 12:00", "2026-03-09 12:00"),
        ("2026-10-31 12:00", "2026-11-02 12:00"),
        ("2026-02-28 12:00", "2026-03-02 12:00"),  # an ordinary Sunday
    ]
    assert bs(None, pairs, NY) == [47 * H, 49 * H, 48 * H]
    assert bs(s, pairs, NY) == [23 * H, 25 * H, 24 * H]


def test_dst_interval_spanning_two_am() -> None:
    s = sched(NY, {"sunday": ["01:00-03:00"]})
    pairs = [("2026-03-08 00:00", "2026-03-08 12:00"), ("2026-11-01 00:00", "2026-11-01 12:00")]
    assert bs(s, pairs, NY) == [1 * H, 3 * H]
    starts, ends = working_intervals(s, date(2026, 3, 8), date(2026, 3, 8))
    # 01:00 EST = 06:00Z, 03:00 EDT = 07:00Z
    assert starts.tolist() == [ms("2026-03-08 06:00")]
    assert ends.tolist() == [ms("2026-03-08 07:00")]
    starts, ends = working_intervals(s, date(2026, 11, 1), date(2026, 11, 1))
    # 01:00 EDT (first occurrence) = 05:00Z, 03:00 EST = 08:00Z
    assert starts.tolist() == [ms("2026-11-01 05:00")]
    assert ends.tolist() == [ms("2026-11-01 08:00")]


def test_dst_nonexistent_and_ambiguous_edges() -> None:
    # Gap times take the pre-change offset (fold=0): 02:30 EST is 03:30 EDT.
    day = [("2026-03-08 00:00", "2026-03-08 12:00")]
    assert bs(sched(NY, {"sunday": ["02:30-04:00"]}), day, NY) == [30 * M]
    assert bs(sched(NY, {"sunday": ["02:15-02:45"]}), day, NY) == [30 * M]  # 03:15-03:45 EDT
    assert bs(sched(NY, {"sunday": ["02:30-03:00"]}), day, NY) == [0]  # 07:30Z-07:00Z: empty
    # 00:00-02:30 ends 07:30Z and 03:00-05:00 starts 07:00Z: the overlap counts once.
    s = sched(NY, {"sunday": ["00:00-02:30", "03:00-05:00"]})
    assert bs(s, day, NY) == [4 * H]
    starts, ends = working_intervals(s, date(2026, 3, 8), date(2026, 3, 8))
    assert starts.tolist() == [ms("2026-03-08 05:00"), ms("2026-03-08 07:30")]
    assert ends.tolist() == [ms("2026-03-08 07:30"), ms("2026-03-08 09:00")]
    # Ambiguous times are the first (daylight) occurrence: 01:30 EDT -> 02:00 EST is 1h30.
    day = [("2026-11-01 00:00", "2026-11-01 12:00")]
    assert bs(sched(NY, {"sunday": ["01:30-02:00"]}), day, NY) == [90 * M]


def test_dst_week_with_office_hours() -> None:
    pairs = [("2026-03-06 16:00", "2026-03-09 10:00"), ("2026-10-30 16:00", "2026-11-02 10:00")]
    assert bs(None, pairs, NY) == [65 * H, 67 * H]
    assert bs(sched(NY), pairs, NY) == [2 * H, 2 * H]


def test_midnight_end_is_next_day() -> None:
    s = sched("Europe/Berlin", {"monday": ["20:00-24:00"], "tuesday": ["00:00-02:00"]})
    pair = [("2026-11-02 23:00", "2026-11-03 01:00"), ("2026-11-02 00:00", "2026-11-04 00:00")]
    assert bs(s, pair, "Europe/Berlin") == [2 * H, 6 * H]
    starts, ends = working_intervals(s, date(2026, 11, 2), date(2026, 11, 3))
    tue = ms("2026-11-03 00:00", "Europe/Berlin")
    assert ends[0] == tue == starts[1]
    assert ends[1] - starts[0] == 6 * H * 1000


# -- inputs and edge values -------------------------------------------------------------
def test_no_schedule_is_calendar_time() -> None:
    start = np.array([0, 1_000, 5_000, np.nan, 7_000])
    end = np.array([90_500, 1_000, 4_000, 1.0, np.nan])
    out = business_seconds(None, start, end)
    np.testing.assert_array_equal(out, [90.5, 0.0, 0.0, np.nan, np.nan])
    assert out.dtype == np.float64


def test_nan_passthrough_and_negative_spans() -> None:
    s = sched(NY, holidays=["US"])
    a, b = ms("2026-11-02 10:00", NY), ms("2026-11-02 11:00", NY)
    start = np.array([a, np.nan, a, np.nan, b])
    out = business_seconds(s, start, np.array([b, b, np.nan, np.nan, a]))
    np.testing.assert_array_equal(out, [3600.0, np.nan, np.nan, np.nan, 0.0])
    all_nan = business_seconds(s, [np.nan, np.nan], [np.nan, 1.0])
    np.testing.assert_array_equal(all_nan, [np.nan] * 2)
    assert business_seconds(s, np.array([], dtype=np.int64), np.array([])).shape == (0,)
    # Nullable pandas integers: pd.NA is missing too.
    start = pd.Series([a, None], dtype="Int64")
    end = pd.Series([b, b], dtype="Int64")
    np.testing.assert_array_equal(business_seconds(s, start, end), [3600.0, np.nan])


def test_schedule_without_working_days_gives_zero() -> None:
    s = sched("UTC", {})
    out = business_seconds(s, [ms("2026-01-01 00:00")], [ms("2026-12-31 00:00")])
    assert out.tolist() == [0.0]


def test_intervals_are_cached_and_keyed_on_content() -> None:
    a, b = sched(NY, holidays=["US"]), sched(NY, holidays=["US"])
    assert a is not b and schedule_key(a) == schedule_key(b)
    first = working_intervals(a, date(2026, 1, 1), date(2026, 12, 31))
    second = working_intervals(b, date(2026, 1, 1), date(2026, 12, 31))
    assert first[0] is second[0] and not first[0].flags.writeable
    # 2026 has 261 weekdays; 11 US holidays fall on one (Jul 4 is a Saturday, observed on
    # Friday Jul 3).
    assert len(first[0]) == 261 - 11
    assert int((first[1] - first[0]).sum()) == (261 - 11) * 8 * H * 1000


def test_business_seconds_by_groups_per_schedule() -> None:
    east, tokyo = sched(NY, holidays=["US"]), sched("Asia/Tokyo")
    schedules = {"alice": east, "bob": sched(NY, holidays=["US"]), "kenji": tokyo, "carol": None}
    keys = pd.Series(["alice", "kenji", "carol", "bob", None, "zed", "alice"])
    start = np.array([ms(x) for x in ["2026-11-02 14:30"] * 7])
    end = np.array([ms(x) for x in ["2026-11-03 01:00"] * 7])
    # Each UTC pair: NY 09:30 Mon -> 20:00 Mon EST, Tokyo 23:30 Mon -> 10:00 Tue JST.
    expected = [7.5 * H, 1 * H, 10.5 * H, 7.5 * H, 10.5 * H, 10.5 * H, 7.5 * H]
    assert business_seconds_by(schedules, keys, start, end).tolist() == expected
    # Unknown and missing keys take the default schedule.
    out = business_seconds_by(schedules, keys.to_numpy(), start, end, default=tokyo)
    assert out.tolist() == [7.5 * H, 1 * H, 10.5 * H, 7.5 * H, 1 * H, 1 * H, 7.5 * H]
    # Categorical and plain-list keys group the same way.
    for same in (keys.astype("category"), keys.tolist()):
        assert business_seconds_by(schedules, same, start, end).tolist() == expected
    with pytest.raises(ValueError):
        business_seconds_by(schedules, ["alice"], start, end)


# -- property: agreement with a minute-by-minute reference ------------------------------
def _minute_reference(
    schedule: Schedule, first: str, last: str
) -> tuple[int, np.ndarray]:
    """Whether each UTC minute in [first, last) is working time, judged from its local wall
    clock (weekday, minute of day, date), never from converted intervals."""
    utc = pd.date_range(first, last, freq="min", tz="UTC", inclusive="left")
    local = utc.tz_convert(schedule.timezone)
    minute = (local.hour * 60 + local.minute).to_numpy()
    weekday = local.day_of_week.to_numpy()
    working = np.zeros(len(utc), dtype=bool)
    for wd, spans in schedule.days.items():
        for s, e in spans:
            working |= (weekday == wd) & (minute >= s) & (minute < e)
    off = set(schedule.dates_off)
    years = list(range(local[0].year, local[-1].year + 1))
    for code in schedule.holidays:
        country, _, sub = code.partition("-")
        off |= set(holidays.country_holidays(country, subdiv=sub or None, years=years))
    off_days = np.array(sorted(off), dtype="datetime64[D]")
    working &= ~np.isin(local.tz_localize(None).normalize().to_numpy().astype("datetime64[D]"),
                        off_days)
    return utc[0].value // 60_000_000_000, working


# Endpoints stay clear of the 01:00-03:00 DST hours, where "working if the wall clock is
# inside the interval" and the documented fold=0 rule legitimately differ.
PROPERTY_SCHEDULES = [
    sched(NY, {**{d: ["09:00-12:00", "13:00-17:30"] for d in WORKDAYS},
               "saturday": ["22:00-24:00"], "sunday": ["00:00-24:00"]},
          holidays=["US"], dates_off=["2026-03-10", "2026-08-14"]),
    sched("Europe/Berlin", {**{d: ["08:00-16:00"] for d in WORKDAYS}, "sunday": ["00:00-00:45",
          "03:00-24:00"]}, holidays=["DE-BY"]),
    sched("Asia/Tokyo", {d: ["09:00-18:00"] for d in WEEKDAYS[:6]}, holidays=["JP"]),
    sched("Australia/Sydney", {d: ["08:30-17:00"] for d in WORKDAYS}, holidays=["AU-NSW"]),
]


@pytest.mark.parametrize("schedule", PROPERTY_SCHEDULES, ids=lambda s: s.timezone)
def test_random_pairs_match_minute_reference(schedule: Schedule) -> None:
    base, working = _minute_reference(schedule, "2025-12-01", "2027-02-01")
    prefix = np.concatenate(([0], np.cumsum(working)))
    rng = np.random.default_rng(20261102)
    n = 3000
    i0 = rng.integers(0, len(working) - 30 * 1440, n)
    span = np.round(np.exp(rng.uniform(0, np.log(20 * 1440), n))).astype(np.int64)
    i1 = i0 + span
    i1[: n // 20] = i0[: n // 20] - 5  # some negative spans
    expected = np.array(
        [60.0 * (prefix[b] - prefix[a]) if b >= a else 0.0 for a, b in zip(i0, i1, strict=True)]
    )
    start = (base + i0) * 60_000
    end = (base + i1) * 60_000
    out = business_seconds(schedule, start, end)
    np.testing.assert_array_equal(out, expected)
    # Same answer through the float64/NaN path and through the grouped API.
    start_f = start.astype(np.float64)
    start_f[::7] = np.nan
    expected_f = expected.copy()
    expected_f[::7] = np.nan
    np.testing.assert_array_equal(business_seconds(schedule, start_f, end), expected_f)
    keys = np.where(rng.random(n) < 0.5, "x", "y")
    by = business_seconds_by({"x": schedule, "y": None}, keys, start, end)
    np.testing.assert_array_equal(by[keys == "x"], expected[keys == "x"])
    np.testing.assert_array_equal(by[keys == "y"], np.maximum(end - start, 0)[keys == "y"] / 1000)
