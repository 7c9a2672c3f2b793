"""Email-lead pairing in the database (``cache.pairing``) against the pandas path.

Issue 6, item 2. For one week, one quarter (13 weeks ending with that week) and all time:
the SQL pairing (``email_lead_pairs``) against what reports do today for email leads
(``Cache.messages(active=...)`` + ``matcher.prepare`` + ``matcher.match_leads``, form rules
off so both compute email leads only). Every run is its own process: wall time and CPU
seconds of the work (with PostgreSQL, plus the server backend's CPU from /proc), peak RSS
of the process by wait4() (and the RSS before the work, so the work's own share shows), the
1-minute load average before and after. Best of --repeat by CPU seconds.
The two methods' pairs are compared row for row.

SQLite stores are opened read-only (``immutable=1``: nothing is written, no migration
runs), so the shared benchmark stores stay as they are. Run from the project root, e.g.:

    nice -n 5 .venv/bin/python benchmarks/bench_pairing.py \\
        /tmp/scale/u1000000-w52-r200/1000000.sqlite /tmp/scale/u1000000-w52-r200/5000000.sqlite
    nice -n 5 .venv/bin/python benchmarks/bench_pairing.py postgresql://u@127.0.0.1:5432/db \\
        --meta /tmp/scale/u100000-w5-r200/meta.json

The week and as-of time default to the store directory's meta.json (bench_scale's: the
last full week, America/New_York, before an hour after the newest message); --week-end and
--as-of override them.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
REPORT_TZ = ZoneInfo("America/New_York")  # [team] timezone of the generated config


def local_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=REPORT_TZ).timestamp() * 1000)


def open_store(target: str) -> Any:
    """The cache at ``target``; a SQLite file read-only and untouched (no WAL, no migration)."""
    if target.startswith(("postgresql://", "postgres://")):
        from replytime.store import open_cache

        return open_cache(target, create=False)
    from replytime.store.sqlite import SQLiteCache

    path = Path(target)
    if Path(f"{path}-wal").exists() and Path(f"{path}-wal").stat().st_size:
        sys.exit(f"{path} has a WAL with content: checkpoint it first (immutable reads skip it)")
    cache = SQLiteCache.__new__(SQLiteCache)  # __init__ would migrate the schema
    cache.path = path
    cache.conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True,
                                 isolation_level=None)
    cache.conn.execute("PRAGMA cache_size=-65536")  # as SQLiteCache sets it
    return cache


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_cpu_s(cache: Any) -> float:
    """CPU seconds of the PostgreSQL backend serving ``cache`` (its /proc stat: the server
    runs on this machine), 0 for SQLite. Parallel workers, if any, are not counted."""
    if getattr(cache, "backend", "") != "postgresql":
        return 0.0
    pid = cache.conn.info.backend_pid
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(opts: argparse.Namespace) -> None:
    """One measured run: compute the pairs with one method, pickle them, print figures."""
    import dataclasses

    from replytime.analysis.matcher import Roster, match_leads, prepare
    from replytime.analysis.sql_leads import email_lead_pairs
    from replytime.config import load_config
    from replytime.store.pairing import PAIR_COLUMNS

    cfg = load_config(opts.config)
    cfg = dataclasses.replace(cfg, leads=dataclasses.replace(cfg.leads, forms=()))
    cache = open_store(opts.store)
    since, until, as_of = opts.since, opts.until, opts.as_of_ms
    before_mb = vm_hwm_mb()
    server = server_cpu_s(cache)
    wall, cpu = time.perf_counter(), time.process_time()
    if opts.child == "sql":
        pairs = email_lead_pairs(cache, cfg, since, until, as_of)
    else:
        active = None if since is None else (since, until if until is not None else 2**53)
        msgs = cache.messages(labels=bool(cfg.leads.labels), active=active)
        leads = match_leads(prepare(msgs, Roster(cfg)), cfg, as_of)
        leads = leads[leads["kind"] == "email"]
        if since is not None:
            leads = leads[leads["lead_time_ms"] >= since]
        if until is not None:
            leads = leads[leads["lead_time_ms"] < until]
        pairs = leads[PAIR_COLUMNS].reset_index(drop=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server = server_cpu_s(cache) - server
    with open(opts.out, "wb") as f:
        pickle.dump(pairs, f)
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "server_cpu_s": server,
                      "rss_before_mb": before_mb,
                      "leads": len(pairs), "answered": int(pairs["reply_id"].notna().sum())}))


def run_child(store: str, config: Path, method: str, period: tuple[int | None, int | None],
              as_of: int, out: Path) -> dict[str, Any]:
    args = [sys.executable, __file__, store, "--config", str(config), "--child", method,
            "--as-of-ms", str(as_of), "--out", str(out)]
    if period[0] is not None:
        args += ["--since-ms", str(period[0])]
    if period[1] is not None:
        args += ["--until-ms", str(period[1])]
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    assert proc.stdout is not None
    text = proc.stdout.read().decode()
    if status != 0:
        raise SystemExit(f"{method} run failed ({status}): {text}")
    fig = json.loads(text.strip().splitlines()[-1])
    fig.update(process_wall_s=elapsed, process_cpu_s=usage.ru_utime + usage.ru_stime,
               peak_rss_mb=usage.ru_maxrss / 1024, load_before=load,
               load_after=os.getloadavg()[0])
    return fig


def periods(week_end: date, as_of: int) -> dict[str, tuple[int | None, int | None]]:
    return {"week": (local_ms(week_end - timedelta(weeks=1)), local_ms(week_end)),
            "quarter": (local_ms(week_end - timedelta(weeks=13)), local_ms(week_end)),
            "all time": (None, None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+", help="SQLite files or postgresql:// URLs")
    ap.add_argument("--config", type=Path, help="default: replytime.toml next to the store/meta")
    ap.add_argument("--meta", type=Path, help="bench_scale's meta.json (default: next to store)")
    ap.add_argument("--week-end", type=date.fromisoformat,
                    help="Monday ending the benchmarked week (default: from meta.json)")
    ap.add_argument("--as-of", help="ISO instant (default: from meta.json)")
    ap.add_argument("--periods", nargs="*", default=["week", "quarter", "all time"])
    ap.add_argument("--methods", nargs="*", default=["sql", "pandas"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--results", type=Path, default=Path("/tmp/bench_pairing.jsonl"))
    # a measured run (internal)
    ap.add_argument("--child", choices=["sql", "pandas"], help=argparse.SUPPRESS)
    ap.add_argument("--since-ms", dest="since", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--until-ms", dest="until", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--as-of-ms", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.child:
        opts.store = opts.stores[0]
        child(opts)
        return

    for store in opts.stores:
        home = Path(store).parent if not store.startswith("postgres") else None
        meta_path = opts.meta or (home / "meta.json" if home else None)
        meta = json.loads(meta_path.read_text()) if meta_path else {}
        config = opts.config or (meta_path.parent if meta_path else Path(".")) / "replytime.toml"
        week_end = opts.week_end or date.fromisoformat(meta["week"][1])
        as_of_text = opts.as_of or meta["as_of"]
        as_of = int(datetime.fromisoformat(as_of_text).astimezone(UTC).timestamp() * 1000)
        label = Path(store).name if home else store.rsplit("/", 1)[-1] + " (PostgreSQL)"
        print(f"\n{label}: week ending {week_end} (New York), as of {as_of_text}", flush=True)
        for name, period in periods(week_end, as_of).items():
            if name not in opts.periods:
                continue
            best: dict[str, dict[str, Any]] = {}
            with tempfile.TemporaryDirectory() as tmp:
                outs = {}
                for i in range(opts.repeat):
                    for method in opts.methods:  # alternated, so load changes hit both
                        outs[method] = Path(tmp) / f"{method}.pkl"
                        fig = run_child(store, config, method, period, as_of, outs[method])
                        rec = {"store": label, "period": name, "method": method, "run": i,
                               "since_ms": period[0], "until_ms": period[1], "as_of": as_of,
                               **fig}
                        with open(opts.results, "a") as f:
                            f.write(json.dumps(rec) + "\n")
                        prev = best.get(method)
                        total = fig["cpu_s"] + fig["server_cpu_s"]
                        if prev is None or total < prev["cpu_s"] + prev["server_cpu_s"]:
                            best[method] = fig
                        print(f"  {name:8} {method:6} run {i}: {fig['leads']:7,} leads, "
                              f"wall {fig['wall_s']:6.2f}s cpu {fig['cpu_s']:6.2f}s"
                              + (f" + server {fig['server_cpu_s']:.2f}s"
                                 if fig["server_cpu_s"] else "") + ", peak RSS "
                              f"{fig['peak_rss_mb']:6.0f} MB (before work "
                              f"{fig['rss_before_mb']:.0f}), load {fig['load_before']:.2f}"
                              f"->{fig['load_after']:.2f}", flush=True)
                same = "n/a"
                if {"sql", "pandas"} <= outs.keys():
                    a, b = (pd.read_pickle(outs[m]) for m in ("sql", "pandas"))
                    try:
                        # No lead at all: the matcher's empty frame has untyped columns.
                        pd.testing.assert_frame_equal(a, b, check_dtype=not (a.empty and b.empty))
                        same = "identical"
                    except AssertionError as exc:
                        same = f"DIFFER: {str(exc).splitlines()[0]}"
            summary = ", ".join(
                f"{m} best cpu {f['cpu_s'] + f['server_cpu_s']:.2f}s wall {f['wall_s']:.2f}s "
                f"rss {f['peak_rss_mb']:.0f} MB" for m, f in best.items())
            print(f"  {name}: {summary}; pairs {same}", flush=True)


if __name__ == "__main__":
    main()
