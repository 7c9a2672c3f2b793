"""Benchmark: reports on a large cache, end to end as CLI processes (brief, section 6).

Target: the weekly report on a 1,000,000-message cache under 2 s end to end, peak memory
under 1 GB. Run from the project root:

    .venv/bin/python benchmarks/bench_report.py                   # 100,000 messages
    .venv/bin/python benchmarks/bench_report.py --messages 1000000

It generates an mbox with examples/generate.py (two years of the example team's mail,
scaled up), imports it with `replytime import` (timed: messages/s, peak RSS), then times
`report weekly` (last full week), `report reps` for that week and for all time, and
`status`. Each figure is the best of --repeat runs (warm page cache).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "replytime.toml"
SCRIPT = Path(sys.executable).with_name("replytime")


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("example_generate",
                                                  ROOT / "examples" / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def run(args: list[str], db: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of this one child (wait4), stdout."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(SCRIPT), "--config", str(CONFIG), "--db", str(db), *args],
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(args)} failed: {err.read().decode().strip()}")
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here")
    ap.add_argument("--repeat", type=int, default=3)
    opts = ap.parse_args()
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="replytime-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    mbox = work / f"{opts.messages}.mbox"
    db = work / f"{opts.messages}.sqlite"
    days = max(56, int(730 * opts.messages / 1_000_000))
    if not mbox.exists():
        gen = _generator()
        t = time.perf_counter()
        gen.write_mbox(mbox, gen.generate_messages(opts.messages // 3 + 10, seed=11, days=days,
                                                   max_messages=opts.messages))
        print(f"generated {opts.messages:,} messages over {days} days in "
              f"{time.perf_counter() - t:.1f}s -> {mbox}")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    wall, rss, _ = run(["import", str(mbox)], db)
    print(f"import (CLI, incl. threading): {wall:.1f}s = {opts.messages / wall:,.0f} msg/s, "
          f"peak RSS {rss:.0f} MB")

    # "Now" for the reports: just after the last message, so last-week has data.
    import sqlite3

    last = sqlite3.connect(db).execute("SELECT max(time_ms) FROM messages").fetchone()[0]
    as_of = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(last / 1000 + 3600))
    cases = [
        ("report weekly (last week)", ["report", "weekly", "--format", "csv"]),
        ("report reps (last week)", ["report", "reps", "--format", "csv", "--since",
                                     "last-week"]),
        ("report reps (all time)", ["report", "reps", "--format", "csv"]),
        ("status", ["status", "--format", "json"]),
    ]
    for label, args in cases:
        best = min((run([*args, "--as-of", as_of] if args[0] == "report" else args, db)
                    for _ in range(opts.repeat)), key=lambda r: r[0])
        print(f"{label:28s} {best[0]:6.2f}s  peak RSS {best[1]:6.0f} MB")
    print(f"(files in {work}; cache {os.path.getsize(db) / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
