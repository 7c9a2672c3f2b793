"""Benchmark: `send weekly --dry-run` and `alert --dry-run` on a large cache, end to end as
CLI processes (what cron runs; `alert` every few minutes).

Targets: `alert` (finding the stale leads of the last 7 days not yet alerted) under 2 s and
`send weekly` (building the whole message) under 3 s on a 1,000,000-message cache. Run from
the project root:

    .venv/bin/python benchmarks/bench_delivery.py                   # 100,000 messages
    .venv/bin/python benchmarks/bench_delivery.py --messages 1000000 --workdir /tmp/bench1m

The cache is made as benchmarks/bench_report.py makes it (same generator, same file names,
so ``--workdir`` shares its mbox and cache); the config is the example's plus a
``[delivery]`` and an ``[alerts]`` section. Nothing is sent: both commands run with
--dry-run, which does all the work but the network.
"""

from __future__ import annotations

import argparse
import importlib.util
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench_report():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_report",
                                                  ROOT / "benchmarks" / "bench_report.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


EXTRA = """
[delivery]
from = "replytime@acme.example"
to = ["manager@acme.example"]
host = "smtp.acme.example"

[alerts]
older_than = "2h"
slack_webhook_env = "BENCH_SLACK_WEBHOOK"
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here")
    ap.add_argument("--repeat", type=int, default=3)
    opts = ap.parse_args()
    br = _bench_report()
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="replytime-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "delivery.toml"
    config.write_text((ROOT / "examples" / "replytime.toml").read_text() + EXTRA)
    br.CONFIG = config
    days = max(56, int(730 * opts.messages / 1_000_000))
    mbox, extra = work / f"{opts.messages}.mbox", work / f"{opts.messages}+1000.mbox"
    db = work / f"{opts.messages}.sqlite"
    if not (mbox.exists() and extra.exists()):
        br.generate(mbox, extra, opts.messages, 1000, days)
    if not db.exists():
        wall, rss, _ = br.run(["import", str(mbox)], db)
        print(f"import: {wall:.1f}s, peak RSS {rss:.0f} MB", flush=True)
    with sqlite3.connect(db) as conn:
        last = conn.execute("SELECT max(time_ms) FROM messages").fetchone()[0]
    as_of = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(last / 1000 + 3600))
    import os

    os.environ["BENCH_SLACK_WEBHOOK"] = "https://hooks.example/never-called"
    cases = [
        ("send weekly --dry-run", ["send", "weekly", "--dry-run", "-o", str(work / "w.eml")]),
        ("alert --dry-run --format json", ["alert", "--dry-run", "--format", "json"]),
    ]
    for label, args in cases:
        runs = [br.run([*args, "--as-of", as_of], db) for _ in range(opts.repeat)]
        wall, rss, out = min(runs, key=lambda r: r[0])
        note = f", {out.count('lead_id')} leads due" if "alert" in label else ""
        print(f"{label}: {wall:.2f}s (best of {opts.repeat}), peak RSS {rss:.0f} MB{note}",
              flush=True)


if __name__ == "__main__":
    main()
