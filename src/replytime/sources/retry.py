"""Backoff and rate limiting shared by the network connectors (Gmail, IMAP).

- :func:`backoff_delay` is exponential backoff with "full jitter" (a uniform draw between 0
  and the capped exponential), which spreads retries of many clients instead of having them
  hammer a recovering server in lock-step.
- :class:`MovingWindowLimiter` keeps a client under a quota defined as a moving average
  ("250 units per second"): the sum of the costs spent in the last ``window`` seconds never
  exceeds ``rate * window * safety``. Unlike a token bucket it never allows a burst above the
  server's own window, so the server never answers 429 just because we were idle before.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable


def backoff_delay(
    attempt: int, *, base: float = 0.5, cap: float = 32.0, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 = first retry), full jitter."""
    ceiling = min(cap, base * (2**attempt))
    return (rng or random).uniform(0.0, ceiling)


def count_failures(attempts: dict[Hashable, int], failed: Iterable[Hashable]) -> int:
    """Add one failed attempt to each of ``failed``; the most attempts any of them has had
    (batch parts that failed again are retried until one reaches the limit)."""
    worst = 0
    for item in failed:
        attempts[item] = attempts.get(item, 0) + 1
        worst = max(worst, attempts[item])
    return worst


class MovingWindowLimiter:
    """Spend quota units without exceeding ``rate`` units/s averaged over ``window`` seconds."""

    def __init__(
        self,
        rate: float,
        *,
        window: float = 1.0,
        safety: float = 0.96,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or window <= 0:
            raise ValueError("rate and window must be positive")
        self.rate = rate
        self.window = window
        self.budget = rate * window * safety
        self._clock = clock
        self._sleep = sleep
        self._spent: deque[list[float]] = deque()  # [time, cost], oldest first
        self._in_window = 0.0
        self._lock = threading.Lock()
        self.total = 0.0  # all units spent, for reporting
        self.started = clock()

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - self.window:
            self._in_window -= self._spent.popleft()[1]
        if not self._spent:
            self._in_window = 0.0  # no float drift once the window is empty

    def available(self) -> float:
        """Units that could be spent right now without waiting."""
        with self._lock:
            self._expire(self._clock())
            return max(0.0, self.budget - self._in_window)

    def acquire_slot(self, cost: float) -> list[float]:
        """Block until ``cost`` units fit in the window and record them; returns the entry,
        which :meth:`settle` re-dates when the request has completed.

        A cost larger than the whole budget is let through once the window is empty (the
        callers size their batches to avoid that)."""
        while True:
            with self._lock:
                now = self._clock()
                self._expire(now)
                if self._in_window + cost <= self.budget or not self._spent:
                    entry = [now, cost]
                    self._spent.append(entry)
                    self._in_window += cost
                    self.total += cost
                    return entry
                # Wait until enough of the oldest spending has left the window.
                need = self._in_window + cost - self.budget
                freed, until = 0.0, self._spent[0][0]
                for t, c in self._spent:
                    freed += c
                    until = t
                    if freed >= need:
                        break
                delay = max(until + self.window - now, 0.001)
            self._sleep(delay)

    def settle(self, entry: list[float]) -> None:
        """Date ``entry`` at the request's completion. The server charged it somewhere
        between sending and completion; counting it until completion + window is the safe
        side, so its moving window can never see more than ours."""
        with self._lock:
            entry[0] = self._clock()

    def acquire(self, cost: float) -> None:
        """Spend ``cost`` units, dated now (for requests that are over at once)."""
        self.acquire_slot(cost)

    def units_per_second(self) -> float:
        """Average spending since the limiter was created."""
        elapsed = self._clock() - self.started
        return self.total / elapsed if elapsed > 0 else 0.0
