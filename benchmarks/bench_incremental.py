"""Benchmark: an incremental import into a big cache, then `report weekly` (issue 16).

Each round copies the cache (``--cache``, e.g. the 1M cache ``bench_report.py --messages
1000000 --days 126`` builds, with its thread_keys filled), syncs it to disk, then times as
whole CLI processes: `replytime import EXTRA --account more` (the messages, their threads,
the kept leads) and `replytime report weekly --format csv` as of an hour after the last
message. With ``--baseline-src`` the rounds alternate between that checkout's package
(PYTHONPATH) and this one on fresh copies, side by side, and check that both leave the
same weekly CSV bytes and the same rows in every table the import writes.

    nice -n 5 .venv/bin/python benchmarks/bench_incremental.py --cache 1m.sqlite \\
        --extra 1000000+1000.mbox --config noforms.toml --baseline-src /tmp/base/src

Target: import + weekly **under 2 s** at 1M messages. Wall time on a shared machine moves
with the load of other work: the load average is printed beside every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 2.0
# What the import writes, each in a fixed order: equal digests, equal tables.
TABLES = {
    "thread ids": "SELECT id, thread_id FROM messages ORDER BY id",
    "threads": "SELECT * FROM threads ORDER BY thread_id",
    "thread_links": "SELECT * FROM thread_links ORDER BY 1, 2",
    "thread_keys": "SELECT * FROM thread_keys ORDER BY 1, 2",
    "leads": "SELECT * FROM leads ORDER BY lead_id",
    "lead_blocks": "SELECT * FROM lead_blocks ORDER BY 1, 2",
    "message_volume": "SELECT * FROM message_volume ORDER BY 1",
}


def run(cmd: list[str], env: dict[str, str], out: Path | None = None
        ) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system) of one command; its
    output to ``out``."""
    start = time.perf_counter()
    with open(out or os.devnull, "wb") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")  # type: ignore[union-attr]
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def digests(db: Path) -> dict[str, str]:
    out = {}
    with sqlite3.connect(db) as conn:
        for name, sql in TABLES.items():
            h = hashlib.md5()
            for row in conn.execute(sql):
                h.update(repr(row).encode())
            out[name] = h.hexdigest()
    return out


def copy(cache: Path, to: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{to}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(f"{to}.locks", ignore_errors=True)
    shutil.copyfile(cache, to)
    os.sync()


def one_round(src: Path, args: argparse.Namespace, db: Path, out: Path) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(src))
    cli = [sys.executable, "-c", "from replytime.cli import run; run()",
           "--config", str(args.config), "--db", str(db)]
    copy(args.cache, db)
    load = os.getloadavg()[0]
    imported = run([*cli, "import", str(args.extra), "--account", "more"], env)
    with sqlite3.connect(db) as conn:
        last = conn.execute("SELECT max(time_ms) FROM messages").fetchone()[0]
    as_of = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(last / 1000 + 3600))
    weekly = run([*cli, "report", "weekly", "--format", "csv", "--as-of", as_of], env, out)
    return {"import": imported, "weekly": weekly, "load": load,
            "csv": out.read_bytes(), "tables": digests(db) if args.check else {}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="the big cache (copied each round)")
    p.add_argument("--extra", type=Path, required=True, help="the mbox of the new messages")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--baseline-src", type=Path, help="another checkout's src/, run alternately")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench-incremental"))
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip comparing the tables (a minute at 1M messages)")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sides = [("after", Path(__file__).resolve().parents[1] / "src")]
    if args.baseline_src:
        sides.insert(0, ("before", args.baseline_src))
    results: dict[str, list[dict[str, object]]] = {name: [] for name, _ in sides}
    for r in range(args.rounds):
        for name, src in sides:
            res = one_round(src, args, args.workdir / "cache.sqlite",
                            args.workdir / f"weekly-{name}.csv")
            results[name].append(res)
            (i_wall, i_rss, i_cpu), (w_wall, _, w_cpu) = res["import"], res["weekly"]  # type: ignore[misc]
            print(f"round {r + 1} {name:6s} import {i_wall:5.2f} s (CPU {i_cpu:4.2f} s, "
                  f"{i_rss:4.0f} MiB)  weekly {w_wall:5.2f} s (CPU {w_cpu:4.2f} s)  "
                  f"total {i_wall + w_wall:5.2f} s  load {res['load']:.2f}", flush=True)
    for name, runs in results.items():
        totals = [r["import"][0] + r["weekly"][0] for r in runs]  # type: ignore[index]
        print(f"{name}: total median {statistics.median(totals):.2f} s "
              f"(target {TARGET_S:.0f} s), runs {', '.join(f'{t:.2f}' for t in totals)}")
    if args.baseline_src:
        first = results["before"][0]
        same = all(r["csv"] == first["csv"] and r["tables"] == first["tables"]
                   for runs in results.values() for r in runs)
        print("weekly CSV and tables " + ("identical" if same else "DIFFER") + " before/after")


if __name__ == "__main__":
    main()
