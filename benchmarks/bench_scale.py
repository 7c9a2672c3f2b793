"""Benchmark at scale: 1M and 5M messages, 200 reps, SQLite and PostgreSQL, as CLI processes.

Issue 6, item 5. Targets: `report weekly` on 1,000,000 messages under 2 s end to end, peak
memory under 1 GB, and report time growing no faster than the leads in the selected period
(the 1M and 5M stores hold the same mail in the benchmarked week). Run from the project root:

    nice -n 5 .venv/bin/python benchmarks/bench_scale.py --unit 100000 --weeks 5  # smoke
    nice -n 5 .venv/bin/python benchmarks/bench_scale.py --multiples 1 --backends sqlite
    nice -n 5 .venv/bin/python benchmarks/bench_scale.py --table    # results as markdown

Data (examples/generate.py with a generated roster of 200 reps, written with its
replytime.toml into --workdir): the "unit" store is one segment of --unit messages over
--weeks weeks ending on Monday 2027-09-06 (by default 52 weeks from the example's first day,
2026-09-07); the 5x store is four earlier segments of the same size and weekly rate (other
seeds, disjoint prospects), oldest first, followed by the unit segment byte for byte. Both
stores therefore hold exactly the same mail from the unit segment's start onwards, and the
benchmarked week (the last full week before the reports' --as-of) is the same.

For each size and backend: a fresh cache, `replytime import` (once, after an untimed read
of the mbox), then `report weekly`, `report reps` for that week and `report reps` over all
time (best of --repeat). Every command is its own process: wall time, CPU seconds and peak
RSS by wait4(); the 1-minute load average is recorded with each figure. A sampler (every
0.5 s) kills a step whose processes together pass --max-rss-gb, or that runs longer than
--max-minutes, and records that instead.
PostgreSQL: a throwaway cluster (tests/pg.py) on loopback under --workdir, stopped at the end.
Results are appended to WORKDIR/results.jsonl; report outputs are kept in WORKDIR/out/.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("replytime")
END = datetime(2027, 9, 6, tzinfo=UTC)  # a Monday: the newest segment ends here
SEED = 11
PROSPECT_STRIDE = 10_000_000  # per segment: no prospect address in two segments
REPORT_TZ = ZoneInfo("America/New_York")  # [team] timezone of the generated config
PAGE = os.sysconf("SC_PAGE_SIZE")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_generate",
                                                  ROOT / "examples" / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


# -- data ------------------------------------------------------------------------------------
def segment_start(k: int, weeks: int) -> datetime:
    """Segment 0 is the newest (the unit store); segment k lies k spans earlier."""
    return END - timedelta(weeks=weeks * (k + 1))


def write_segment(gen: ModuleType, roster: Any, out: Any, k: int, unit: int, weeks: int,
                  lead_times: list[int] | None = None) -> dict[str, Any]:
    """Append segment k to the open binary file ``out``; returns its counts and time span."""
    msgs = gen.generate_messages(
        int(unit / gen.MESSAGES_PER_THREAD) + 10, SEED + k, segment_start(k, weeks),
        weeks * 7, unit, roster, k * PROSPECT_STRIDE,
    )
    n, first, last = 0, None, 0
    for m in msgs:
        out.write(f"From {m.sender} {time.asctime(time.gmtime(m.ts))}\n".encode() + m.raw
                  + b"\n")  # the same bytes as generate.write_mbox
        if lead_times is not None and m.lead is not None:
            lead_times.append(m.lead.lead_time)
        first = m.ts if first is None else first
        last = m.ts
        n += 1
    return {"segment": k, "seed": SEED + k, "start": segment_start(k, weeks).isoformat(),
            "messages": n, "first_ts": first, "last_ts": last}


def prepare(work: Path, unit: int, weeks: int, reps: int, multiples: list[int]) -> dict[str, Any]:
    """Write the config and the mailboxes that are missing; returns meta.json's content."""
    meta_path = work / "meta.json"
    params = {"unit": unit, "weeks": weeks, "reps": reps, "seed": SEED}
    meta: dict[str, Any] = {}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") != params:
            sys.exit(f"{work} holds data made with {meta.get('params')}: use another --workdir")
    gen = _generator()
    roster = gen.build_roster(reps)
    config = work / "replytime.toml"
    config.write_text(roster.toml(), encoding="utf-8")
    unit_mbox = work / f"{unit}.mbox"
    if "segments" not in meta or not unit_mbox.exists():
        t = time.perf_counter()
        lead_times: list[int] = []
        with open(unit_mbox, "wb") as f:
            seg0 = write_segment(gen, roster, f, 0, unit, weeks, lead_times)
        # "Now" for every report: an hour after the newest message, so the last full week
        # before it has its replies; the same instant for both sizes.
        as_of = datetime.fromtimestamp(seg0["last_ts"] + 3600, UTC)
        local = as_of.astimezone(REPORT_TZ).date()
        monday = local - timedelta(days=local.weekday())
        since, until = monday - timedelta(days=7), monday
        lo = int(datetime(since.year, since.month, since.day, tzinfo=REPORT_TZ).timestamp())
        hi = int(datetime(until.year, until.month, until.day, tzinfo=REPORT_TZ).timestamp())
        meta = {"params": params, "segments": [seg0], "as_of": as_of.isoformat(),
                "week": [since.isoformat(), until.isoformat()],
                "truth_leads_in_week": sum(lo <= x < hi for x in lead_times),
                "truth_leads_unit": len(lead_times)}
        meta_path.write_text(json.dumps(meta, indent=1))
        print(f"generated {seg0['messages']:,} messages -> {unit_mbox} "
              f"({time.perf_counter() - t:.0f}s)", flush=True)
    for mult in multiples:
        path = work / f"{unit * mult}.mbox"
        if mult == 1 or (path.exists() and f"x{mult}" in meta):
            continue
        t = time.perf_counter()
        with open(path, "wb") as f:
            segs = [write_segment(gen, roster, f, k, unit, weeks)
                    for k in range(mult - 1, 0, -1)]  # oldest first: the file is in time order
            with open(unit_mbox, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
        meta[f"x{mult}"] = {"segments": segs + meta["segments"][:1]}
        meta_path.write_text(json.dumps(meta, indent=1))
        total = sum(s["messages"] for s in meta[f"x{mult}"]["segments"])
        print(f"generated {total:,} messages -> {path} ({time.perf_counter() - t:.0f}s)",
              flush=True)
    meta["config"] = str(config)
    return meta


# -- measuring -------------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    """Every process's children, by parent pid, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the ")" that ends the command name: state, ppid, ...
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _tree(children: dict[int, list[int]], root: int) -> list[int]:
    """``root`` and its descendants (PostgreSQL's backends call setsid(): a process group
    would miss them)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def _pss_mb(pid: int) -> float:
    """Proportional set size: shared memory (PostgreSQL's buffers) counted once in a sum."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Run:
    wall: float
    cpu: float
    rss_mb: float  # wait4: the largest of the process and its waited-for workers
    group_mb: float  # sampled: the sum over the process tree (CLI + parser workers)
    server_mb: float  # sampled: PostgreSQL's processes, PSS summed (0 for SQLite)
    load: tuple[float, float, float]  # at the end of the run
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    stopped: str = ""  # why the sampler stopped it, if it did


def run(args: list[str], max_mb: float, max_s: float, server_pid: int | None,
        src: Path | None = None, out_path: Path | None = None) -> Run:
    """One CLI command in its own process group, watched by a sampler thread; ``src``: the
    replytime package under that directory (PYTHONPATH) instead of the installed one;
    ``out_path``: its standard output goes to that file, not into ``Run.stdout`` (a big
    output held here would count in every later child's peak RSS: Linux's maxrss carries
    the forking parent's size over exec)."""
    command, env = [str(SCRIPT)], None
    if src is not None:  # the same console script, importing the package from src
        command = [sys.executable, "-c", "from replytime.cli import run; run()"]
        env = {**os.environ, "PYTHONPATH": str(src)}
    done = threading.Event()
    peak = {"group": 0.0, "server": 0.0}
    stopped: list[str] = []
    with (open(out_path, "w+b") if out_path else tempfile.TemporaryFile()) as out, \
            tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*command, *args], stdout=out, stderr=err, env=env,
                                start_new_session=True)  # its own group: one killpg ends it

        def sample() -> None:
            while not done.wait(0.5):
                children = _children()
                group = sum(_rss_mb(p) for p in _tree(children, proc.pid))
                peak["group"] = max(peak["group"], group)
                if server_pid is not None:
                    server = sum(_pss_mb(p) for p in _tree(children, server_pid))
                    peak["server"] = max(peak["server"], server)
                over = (f"RSS {group / 1024:.1f} GB > {max_mb / 1024:.0f} GB" if group > max_mb
                        else f"still running after {max_s / 60:.0f} min"
                        if time.perf_counter() - t0 > max_s else "")
                if over:
                    stopped.append(f"stopped after {time.perf_counter() - t0:.0f}s: {over}")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        load = os.getloadavg()
        out.seek(0)
        err.seek(0)
        stdout = "" if out_path else out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not stopped:
        sys.exit(f"replytime {' '.join(args)} failed ({code}):\n{stderr[-3000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, peak["group"],
               peak["server"], load, stdout, stderr, stopped[0] if stopped else "")


@contextlib.contextmanager
def postgres(work: Path) -> Iterator[Any]:
    """tests/pg.py's throwaway cluster, with its data directory under ``work``."""
    sys.path.insert(0, str(ROOT))
    from tests.pg import PostgresServer

    old = tempfile.tempdir
    tempfile.tempdir = str(work)  # PostgresServer.start() makes its root with mkdtemp()
    try:
        server = PostgresServer().start()
    finally:
        tempfile.tempdir = old
    try:
        yield server
    finally:
        server.stop()


def _drop(server: Any, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def source_state() -> str:
    """The commit and any uncommitted changes under src/ (others work in this tree)."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--short", "src"],
                           capture_output=True, text=True, check=False).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted: {', '.join(changed)}" if changed else "")


def bench(work: Path, meta: dict[str, Any], size: int, backend: str, opts: argparse.Namespace,
          server: Any | None) -> None:
    mbox = work / f"{size}.mbox"
    since, until = meta["week"]
    as_of = meta["as_of"]
    out_dir = work / "out"
    out_dir.mkdir(exist_ok=True)
    name = f"scale{size}"
    if backend == "sqlite":
        db = str(work / f"{size}.sqlite")
        if opts.reports_only and not Path(db).exists():
            sys.exit(f"--reports-only: no cache {db}")
        fresh = () if opts.reports_only else ("", "-wal", "-shm", ".lock", ".locks")
        for suffix in fresh:  # a fresh cache for every import
            p = Path(db + suffix)
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        server_pid = None
    else:
        assert server is not None and server.proc is not None
        _drop(server, name)
        db = server.create_database(name)
        server_pid = server.proc.pid
    base = ["--config", meta["config"], "--db", db]
    limits = (opts.max_rss_gb * 1024, opts.max_minutes * 60, server_pid)
    state = source_state()

    def record(step: str, r: Run, runs: int, **extra: Any) -> None:
        row = {"size": size, "backend": backend, "step": step, "wall_s": round(r.wall, 3),
               "cpu_s": round(r.cpu, 2), "rss_mb": round(r.rss_mb), "group_mb": round(r.group_mb),
               "server_mb": round(r.server_mb), "load": [round(x, 2) for x in r.load],
               "runs": runs, "stopped": r.stopped, "source": state,
               "when": datetime.now(UTC).isoformat(timespec="seconds"), **extra}
        with open(work / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        rate = f" {extra['msg_s']:>9,.0f} msg/s" if extra.get("msg_s") else " " * 15
        server_txt = f"  server {r.server_mb:,.0f} MB" if server_pid else ""
        print(f"{size:>9,} {backend:10s} {step:22s} {r.wall:8.2f}s{rate}  cpu {r.cpu:7.1f}s  "
              f"peak RSS {r.rss_mb:6,.0f} MB (group {r.group_mb:6,.0f}){server_txt}  "
              f"load {r.load[0]:.2f}  {r.stopped}", flush=True)

    if not opts.reports_only:
        with open(mbox, "rb") as f:  # warm the page cache: the import reads, not the disk
            while f.read(1 << 24):
                pass
        r = run([*base, "import", str(mbox), "--account", "scale"], *limits)
        m = re.search(r"imported (\d+) messages", r.stderr)
        n = int(m.group(1)) if m else 0
        record("import", r, 1, messages=n, msg_s=round(n / r.wall) if n else None)
        if r.stopped:
            return
    steps = [
        ("report weekly", ["report", "weekly", "--format", "csv"]),
        ("report reps (week)", ["report", "reps", "--format", "csv", "--since", since,
                                "--until", until]),
        ("report reps (all time)", ["report", "reps", "--format", "csv"]),
    ]
    if opts.no_all_time:  # reruns of the period figures, without minutes of all-time reports
        steps.pop()
    for weeks in opts.period_weeks:  # longer periods ending with the same week: more leads
        start = (datetime.fromisoformat(until) - timedelta(weeks=weeks)).date().isoformat()
        steps.append((f"report reps ({weeks} weeks)", ["report", "reps", "--format", "csv",
                                                        "--since", start, "--until", until]))
    rounds = [""]
    if backend == "postgresql" and opts.pg_vacuum:
        rounds.append(", after VACUUM ANALYZE")
    for suffix in rounds:
        if suffix:
            # Diagnosis: the same reports once autovacuum's work is done (dead row versions
            # of the thread rebuild removed, statistics fresh).
            t = time.perf_counter()
            _vacuum(db)
            print(f"VACUUM ANALYZE: {time.perf_counter() - t:.1f}s", flush=True)
        for step, args in steps:
            runs: list[Run] = []
            for _ in range(opts.repeat):
                runs.append(run([*base, *args, "--as-of", as_of], *limits))
                if runs[-1].stopped:
                    break
            best = min(runs, key=lambda x: (bool(x.stopped), x.wall))
            extra: dict[str, Any] = {"walls": [round(x.wall, 3) for x in runs]}
            if not best.stopped:
                slug = step.replace(" ", "-").replace("(", "").replace(")", "")
                (out_dir / f"{size}-{backend}-{slug}.csv").write_text(best.stdout)
                if step.startswith("report reps"):
                    extra["leads"] = _leads(best.stdout)
            record(step + suffix, best, len(runs), **extra)
    if backend == "postgresql" and server is not None and not opts.keep_pg:
        _drop(server, name)  # frees the disk before the next size


def _vacuum(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def _leads(csv_text: str) -> int:
    import csv
    import io

    return sum(int(row["leads"]) for row in csv.DictReader(io.StringIO(csv_text)))


# -- the table --------------------------------------------------------------------------------
def table(work: Path) -> None:
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    latest: dict[tuple[int, str, str], dict[str, Any]] = {}
    for row in rows:  # a rerun replaces the earlier figure
        latest[(row["size"], row["backend"], row["step"])] = row
    print("| messages | backend | step | wall | msg/s | CPU | peak RSS | load (1 min) | runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    order = ["import", "report weekly", "report reps (week)", "report reps (all time)"]

    def key(kv: tuple[tuple[int, str, str], Any]) -> tuple[int, bool, bool, int]:
        size, backend, step = kv[0]
        base, _, after = step.partition(", ")
        if base in order:
            rank = order.index(base)
        else:  # "report reps (N weeks)": by N
            weeks = re.search(r"\((\d+) weeks\)", base)
            rank = len(order) + (int(weeks.group(1)) if weeks else 0)
        return size, backend != "sqlite", bool(after), rank

    for (size, backend, step), row in sorted(latest.items(), key=key):
        rate = f"{row['msg_s']:,}" if row.get("msg_s") else ""
        wall = row["stopped"] or f"{row['wall_s']:.2f} s"
        server = f" (+ server {row['server_mb']:,} MB)" if row["server_mb"] else ""
        print(f"| {size:,} | {backend} | {step} | {wall} | {rate} | {row['cpu_s']:.1f} s | "
              f"{row['rss_mb']:,} MB{server} | {row['load'][0]:.2f} | {row['runs']} |")
    meta = json.loads((work / "meta.json").read_text())
    print(f"\nweek {meta['week'][0]}..{meta['week'][1]}, as of {meta['as_of']}; generator's "
          f"ground truth: {meta['truth_leads_in_week']} leads in that week")
    for (size, backend, step), row in sorted(latest.items()):
        if "leads" in row:
            print(f"{size:,} {backend} {step}: {row['leads']:,} leads")
    for backend in ("sqlite", "postgresql"):
        outs = sorted((work / "out").glob(f"*-{backend}-report-weekly.csv"))
        if len(outs) > 1:
            same = len({p.read_bytes() for p in outs}) == 1
            print(f"{backend}: weekly report output {'identical' if same else 'DIFFERS'} "
                  f"across {', '.join(p.name.split('-')[0] for p in outs)} messages")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unit", type=int, default=1_000_000, help="messages in the unit store")
    ap.add_argument("--weeks", type=int, default=52, help="weeks one unit of mail spans")
    ap.add_argument("--multiples", type=int, nargs="+", default=[1, 5],
                    help="store sizes, in units (default: 1 5)")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--backends", nargs="+", choices=("sqlite", "postgresql"),
                    default=["sqlite", "postgresql"])
    ap.add_argument("--repeat", type=int, default=3, help="runs per report (best is kept)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scale"))
    ap.add_argument("--max-rss-gb", type=float, default=14.0,
                    help="stop a step whose process group passes this much RSS")
    ap.add_argument("--max-minutes", type=float, default=25.0, help="stop a step after this")
    ap.add_argument("--keep-pg", action="store_true", help="keep each PostgreSQL database")
    ap.add_argument("--period-weeks", type=int, nargs="*", default=[],
                    help="also `report reps` over this many weeks up to the same week's end")
    ap.add_argument("--no-all-time", action="store_true", help="skip `report reps` over all time")
    ap.add_argument("--pg-vacuum", action="store_true",
                    help="PostgreSQL: then VACUUM ANALYZE and time the reports again")
    ap.add_argument("--reports-only", action="store_true",
                    help="SQLite: time the reports again on the existing cache (no import)")
    ap.add_argument("--table", action="store_true", help="print results.jsonl as markdown")
    opts = ap.parse_args()
    work = opts.workdir / f"u{opts.unit}-w{opts.weeks}-r{opts.reps}"
    work.mkdir(parents=True, exist_ok=True)
    if opts.table:
        table(work)
        return
    if opts.reports_only and opts.backends != ["sqlite"]:
        sys.exit("--reports-only works with --backends sqlite (the PostgreSQL cluster is gone)")
    meta = prepare(work, opts.unit, opts.weeks, opts.reps, opts.multiples)
    print(f"week {meta['week'][0]}..{meta['week'][1]} (America/New_York), as of "
          f"{meta['as_of']}; source {source_state()}; load {os.getloadavg()[0]:.2f}", flush=True)
    server = None
    with contextlib.ExitStack() as stack:
        if "postgresql" in opts.backends:
            server = stack.enter_context(postgres(work))
        for mult in opts.multiples:
            for backend in opts.backends:
                bench(work, meta, opts.unit * mult, backend, opts, server)
    print(f"(results appended to {work / 'results.jsonl'})")


if __name__ == "__main__":
    main()
