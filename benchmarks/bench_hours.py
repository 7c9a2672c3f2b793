"""Benchmark business time: 1,000,000 random lead/reply pairs over two years.

Run: .venv/bin/python benchmarks/bench_hours.py [N]
Target: well under 1 s for a million pairs with a US schedule and holidays.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from replytime.analysis.hours import _intervals, _knots, business_seconds, business_seconds_by
from replytime.config import WEEKDAYS, parse_schedule


def main(n: int = 1_000_000) -> None:
    us = parse_schedule("us", {
        "timezone": "America/New_York",
        **{d: ["09:00-12:00", "13:00-17:00"] for d in WEEKDAYS[:5]},
        "holidays": ["US", "US-NY"],
        "dates_off": ["2025-12-24", "2026-12-24"],
    })
    west = parse_schedule("west", {
        "timezone": "America/Los_Angeles",
        **{d: ["08:00-16:30"] for d in WEEKDAYS[:5]},
        "holidays": ["US-CA"],
    })
    rng = np.random.default_rng(0)
    t0 = 1_735_689_600_000  # 2025-01-01T00:00Z
    two_years = 2 * 365 * 86_400_000
    start = rng.integers(t0, t0 + two_years, n)
    # Replies from minutes to ~3 weeks later (log-uniform), some leads unanswered (NaN).
    delay = np.exp(rng.uniform(np.log(60_000), np.log(21 * 86_400_000), n)).astype(np.int64)
    end = (start + delay).astype(np.float64)
    end[rng.random(n) < 0.1] = np.nan

    def timed(label: str, fn) -> np.ndarray:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = fn()
        print(f"{label:<52} {time.perf_counter() - t:7.3f} s")
        return out

    print(f"{n:,} pairs, 2025-2026, 10% unanswered")
    _intervals.cache_clear()
    _knots.cache_clear()
    out = timed("business_seconds, cold (builds intervals, holidays)",
                lambda: business_seconds(us, start, end))
    timed("business_seconds, warm (cached intervals)", lambda: business_seconds(us, start, end))
    timed("calendar (schedule=None)", lambda: business_seconds(None, start, end))
    keys = rng.choice(np.array(["alice", "bob", "carol", "dan"]), n)
    schedules = {"alice": us, "bob": us, "carol": west, "dan": None}
    timed("business_seconds_by, 4 reps / 3 schedules, warm",
          lambda: business_seconds_by(schedules, keys, start, end))
    rep = pd.Series(keys, dtype="category")
    timed("business_seconds_by, same with categorical keys",
          lambda: business_seconds_by(schedules, rep, start, end))
    answered = ~np.isnan(out)
    print(f"answered: mean business {out[answered].mean() / 3600:.2f} h, "
          f"mean calendar {np.nanmean(end - start) / 3.6e6:.2f} h")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
