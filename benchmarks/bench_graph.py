"""Microsoft 365 first sync through the fake Graph with Graph's per-mailbox limits.

Usage: .venv/bin/python benchmarks/bench_graph.py [--messages 100000] [--ignore-expand]

The fake identity platform and Graph (tests/fake_graph.py) run in their own process (so
they never compete with the client for the GIL) on loopback HTTPS, enforcing Outlook's
limits per mailbox: 4 requests in flight and 10,000 requests per 10 minutes, answering 429
with Retry-After beyond them. The client signs in with the real msal (device code), then
syncs Inbox and Sent Items. Reports messages/s for the first sync (target: at least 1,000,
the order of the throttling ceiling), its requests, 429s, and the requests of a second sync
with nothing new (target: one per folder).

``--ignore-expand`` makes delta pages drop the expanded MAPI properties, so every Sent Items
message is fetched again in ``$batch`` requests of 20 (each part counts against the limit):
the cost the expansion saves.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replytime.config import Account, Config  # noqa: E402
from replytime.sources import msauth, msgraph  # noqa: E402
from replytime.store import open_cache  # noqa: E402
from tests.fake_graph import FakeMicrosoft, generate  # noqa: E402
from tests.loopback import ServedFake  # noqa: E402

TARGET_MSG_S = 1000.0


def start_fake(messages: int, certs: str, ignore_expand: bool, sent: float
               ) -> tuple[FakeMicrosoft, dict[str, Any]]:
    fake = FakeMicrosoft(Path(certs), limit=10_000, window=600.0, max_concurrent=4)
    generate(fake.box, messages, seed=1, sent_share=sent)
    fake.delta_ignores_expand = ignore_expand
    fake.start()
    return fake, fake.account_options(Path(certs) / "msal.json")


def figures(fake: FakeMicrosoft) -> dict[str, int]:
    return {"graph_requests": fake.graph_requests, "batch_parts": fake.batch_parts,
            "throttled": fake.throttled, "peak": fake.peak}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--sent-share", type=float, default=0.3,
                    help="share of messages that are replies in Sent Items")
    ap.add_argument("--ignore-expand", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    t0 = time.monotonic()
    served = ServedFake(start_fake, (args.messages, str(work / "certs"), args.ignore_expand,
                                     args.sent_share), figures)
    options = served.hello
    print(f"fake Graph with {args.messages:,} messages ready in {time.monotonic() - t0:.1f}s")
    account = Account("bench", "microsoft", {**options, "retry_base": 0.5, "retry_cap": 32.0})
    msauth.device_sign_in(account)
    cache = open_cache(work / "cache.sqlite")

    before = served.figures()
    started = time.monotonic()
    stats = msgraph.sync(cache, account, Config())
    took = time.monotonic() - started
    after = served.figures()
    rate = stats.fetched / took
    print(f"first sync: {stats.fetched:,} messages in {took:.1f}s = {rate:,.0f} msg/s "
          f"(target >= {TARGET_MSG_S:,.0f}) {'OK' if rate >= TARGET_MSG_S else 'BELOW TARGET'}")
    print(f"  requests: {after['graph_requests'] - before['graph_requests']:,} "
          f"({after['batch_parts'] - before['batch_parts']:,} $batch parts), "
          f"429s: {after['throttled'] - before['throttled']}, "
          f"most in flight: {after['peak']}, retries: {stats.extra['retries']}")
    again = time.monotonic()
    second = msgraph.sync(cache, account, Config())
    end = served.figures()
    n = end["graph_requests"] - after["graph_requests"]
    print(f"nothing new: {n} requests for 2 folders in {time.monotonic() - again:.2f}s "
          f"(target: 2) {'OK' if n == 2 and second.fetched == 0 else 'OFF TARGET'}")
    served.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
