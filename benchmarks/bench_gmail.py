"""Gmail full sync against the fake Gmail server with the per-user quota enforced.

Usage: .venv/bin/python benchmarks/bench_gmail.py [--messages 100000] [--rate 250]

The fake server runs in its own process (so it never competes with the client for the GIL)
and enforces ``rate`` units/s over a one-second moving window, answering 429 beyond it.
Reports messages/s, quota units per message (target: below 5, one messages.get), the share
of the quota ceiling used (target: at least 90%), 429s received, and the cost of an
incremental sync with nothing new (target: one history.list call).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replytime.config import Account, Config  # noqa: E402
from replytime.sources import gmail  # noqa: E402
from replytime.store import open_cache  # noqa: E402
from tests.fake_gmail import FakeGmail, generate_mailbox  # noqa: E402
from tests.loopback import ServedFake  # noqa: E402

TARGET_CEILING = 0.90
MESSAGES_GET_UNITS = 5


def start_fake(messages: int, rate: float, window: float, seed: int
               ) -> tuple[FakeGmail, tuple[str, int, int]]:
    fake = FakeGmail(generate_mailbox(messages, seed=seed), quota_rate=rate,
                     quota_window=window, log_requests=False)
    return fake, (fake.start(), len(fake.messages), len(fake.threads))


def figures(fake: FakeGmail) -> dict[str, int]:
    return {"units": fake.units_total, "rejected_429": fake.rejected_429,
            "refreshes": fake.refresh_count}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=250.0, help="quota units per second")
    ap.add_argument("--window", type=float, default=1.0, help="moving-average window, seconds")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    served = ServedFake(start_fake, (args.messages, args.rate, args.window, args.seed), figures)
    url, n_messages, n_threads = served.hello
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token.json"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, json.dumps({"refresh_token": "refresh-secret-1", "client_id": "bench",
                                 "client_secret": "bench", "token_uri": url + "token"}).encode())
        os.close(fd)
        account = Account("bench", "gmail", {
            "token_file": str(token), "api_endpoint": url, "quota_rate": args.rate,
            "quota_window": args.window,
        })
        cache = open_cache(Path(tmp) / "cache.sqlite")
        t0 = time.monotonic()
        stats = gmail.sync(cache, account, Config())
        elapsed = time.monotonic() - t0
        full = served.figures()
        t1 = time.monotonic()
        inc = gmail.sync(cache, account, Config())
        inc_elapsed = time.monotonic() - t1
        after = served.stop()
        cached = cache.conn.execute("SELECT count(*) FROM locations").fetchone()[0]

    units = full["units"]
    per_message = units / max(1, stats.fetched)
    ceiling = units / (args.rate * elapsed)
    print(f"mailbox: {n_messages} messages in {n_threads} threads; quota {args.rate:g} units/s "
          f"over {args.window:g} s")
    print(f"full sync: {stats.fetched} messages ({cached} cached) in {elapsed:.1f} s = "
          f"{stats.fetched / elapsed:.1f} messages/s")
    print(f"quota units: {units} = {per_message:.3f} units/message "
          f"(messages.get alone: {MESSAGES_GET_UNITS}) "
          f"[{'ok' if per_message < MESSAGES_GET_UNITS else 'MISSED'}]")
    print(f"quota ceiling reached: {ceiling:.1%} (target >= {TARGET_CEILING:.0%}) "
          f"[{'ok' if ceiling >= TARGET_CEILING else 'MISSED'}]")
    print(f"429 answers: {full['rejected_429']}; requests: {stats.extra['requests']}; "
          f"retries: {stats.extra['retries']}")
    print(f"incremental, nothing new: {inc.extra['requests']} request(s), "
          f"{after['units'] - units} units, {inc_elapsed * 1000:.0f} ms "
          f"[{'ok' if inc.extra['requests'] == 1 else 'MISSED'}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
