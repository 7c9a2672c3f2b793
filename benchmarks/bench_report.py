"""Benchmark: reports on a large cache, end to end as CLI processes.

Targets (issue 16): every report on a 1,000,000-message cache with ~16,000 leads a week
under 1 s end to end with peak RSS under 300 MB, `status` under 0.5 s, and an incremental
import of 1,000 new messages followed by `report weekly` under 2 s. Run from the project
root:

    .venv/bin/python benchmarks/bench_report.py                   # 100,000 messages
    .venv/bin/python benchmarks/bench_report.py --messages 1000000 --days 126

It generates an mbox with examples/generate.py (the example team's mail; ``--days`` sets
how many days it spans, default two years scaled to the size: 126 days at 1M gives ~16,500
leads a week) and ``--extra`` more messages after it in a second mbox, imports the first
with `replytime import` (timed: messages/s, peak RSS), then times `report weekly` (last full
week), `report reps/leads/unanswered/volume/threads/sla` for that week and for all time, and
`status`, each the best of --repeat runs (warm page cache). Last, on a copy of the cache,
the import of the extra messages followed by `report weekly` (once: the import changes the
cache). ``--src DIR`` runs the code under DIR (PYTHONPATH) instead of the installed package,
to compare commits on the same files; ``--keep-cache`` reuses an imported cache;
``--config`` another config (the example's has form rules, kept like email leads; a config
with label filters pairs the period's messages on every report).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
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


def run(args: list[str], db: Path, src: Path | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of this one child (wait4), stdout."""
    env = dict(os.environ)
    command = [str(SCRIPT)]
    if src is not None:  # the same console script, importing the package from src
        env["PYTHONPATH"] = str(src)
        command = [sys.executable, "-c", "from replytime.cli import run; run()"]
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*command, "--config", str(CONFIG), "--db", str(db), *args],
                                stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(args)} failed: {err.read().decode().strip()}")
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def generate(mbox: Path, extra_mbox: Path, messages: int, extra: int, days: float) -> None:
    """``messages`` messages into ``mbox`` and the ``extra`` after them into
    ``extra_mbox``: one generated mailbox in time order, cut in two."""
    gen = _generator()
    t = time.perf_counter()
    msgs = gen.generate_messages(int((messages + extra) / gen.MESSAGES_PER_THREAD) + 10,
                                 seed=11, days=days, max_messages=messages + extra)
    with open(mbox, "wb") as first, open(extra_mbox, "wb") as rest:
        for i, m in enumerate(msgs):
            out = first if i < messages else rest
            out.write(f"From {m.sender} {time.asctime(time.gmtime(m.ts))}\n".encode() + m.raw
                      + b"\n")  # the same bytes as generate.write_mbox
    print(f"generated {messages:,} + {extra:,} messages over {days:g} days in "
          f"{time.perf_counter() - t:.1f}s -> {mbox}", flush=True)


def _remove_cache(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(f"{db}.locks", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--days", type=float, default=None,
                    help="days the mail spans (default: 730 per million, at least 56)")
    ap.add_argument("--extra", type=int, default=1000,
                    help="messages after those for the incremental import")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--src", type=Path, default=None, help="run the package from this dir")
    ap.add_argument("--keep-cache", action="store_true", help="reuse an imported cache")
    ap.add_argument("--label", default="", help="suffix of the cache file name")
    ap.add_argument("--config", type=Path, default=CONFIG,
                    help="replytime.toml (default: the example's, which has form rules)")
    opts = ap.parse_args()
    globals()["CONFIG"] = opts.config.resolve()
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="replytime-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    days = opts.days or max(56, int(730 * opts.messages / 1_000_000))
    mbox = work / f"{opts.messages}.mbox"
    extra_mbox = work / f"{opts.messages}+{opts.extra}.mbox"
    db = work / f"{opts.messages}{opts.label}.sqlite"
    if not (mbox.exists() and extra_mbox.exists()):
        generate(mbox, extra_mbox, opts.messages, opts.extra, days)
    src = opts.src.resolve() if opts.src else None
    if not (opts.keep_cache and db.exists()):
        _remove_cache(db)
        wall, rss, _ = run(["import", str(mbox)], db, src)
        print(f"import (CLI, incl. threading): {wall:.1f}s = {opts.messages / wall:,.0f} msg/s, "
              f"peak RSS {rss:.0f} MB", flush=True)

    # "Now" for the reports: just after the last message, so last-week has data.
    import sqlite3

    with sqlite3.connect(db) as conn:
        last = conn.execute("SELECT max(time_ms) FROM messages").fetchone()[0]
    as_of = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(last / 1000 + 3600))
    week = ["--since", "last-week"]
    cases = [("report weekly (last week)", ["report", "weekly", "--format", "csv"])]
    for kind in ("reps", "leads", "unanswered", "volume", "threads", "sla"):
        cases.append((f"report {kind} (last week)", ["report", kind, "--format", "csv", *week]))
        cases.append((f"report {kind} (all time)", ["report", kind, "--format", "csv"]))
    cases.append(("status", ["status", "--format", "json"]))
    for label, args in cases:
        full = [*args, "--as-of", as_of] if args[0] == "report" else args
        best = min((run(full, db, src) for _ in range(opts.repeat)), key=lambda r: r[0])
        extra = ""
        if args[:2] == ["report", "leads"]:
            extra = f"  ({best[2].count(chr(10)) - 1:,} leads)"
        print(f"{label:30s} {best[0]:6.2f}s  peak RSS {best[1]:6.0f} MB{extra}", flush=True)

    # Incremental: the extra messages into a copy of the cache, then the weekly report.
    copy = work / f"{opts.messages}{opts.label}-incremental.sqlite"
    _remove_cache(copy)
    with sqlite3.connect(db) as conn, sqlite3.connect(copy) as dest:
        conn.backup(dest)
    # On disk before timing, as a user's cache is: otherwise the import's first checkpoint
    # (an fsync of the file) would also write out the whole fresh copy.
    fd = os.open(copy, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    with sqlite3.connect(copy) as conn:
        last = conn.execute("SELECT max(time_ms) FROM messages").fetchone()[0]
    wall_i, rss_i, _ = run(["import", str(extra_mbox), "--account", "more"], copy, src)
    as_of = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(last / 1000 + 7200))
    wall_w, rss_w, _ = run(["report", "weekly", "--format", "csv", "--as-of", as_of], copy, src)
    print(f"import {opts.extra:,} more (CLI)     {wall_i:6.2f}s  peak RSS {rss_i:6.0f} MB")
    print(f"then report weekly             {wall_w:6.2f}s  peak RSS {rss_w:6.0f} MB")
    print(f"incremental total              {wall_i + wall_w:6.2f}s")
    _remove_cache(copy)
    print(f"(files in {work}; cache {os.path.getsize(db) / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
