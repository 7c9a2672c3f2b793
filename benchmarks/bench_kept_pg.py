"""Every report at 5M messages on PostgreSQL, from the kept lead tables, as CLI processes.

Issue 16: `report weekly`, and `report reps/leads/volume/threads/sla/unanswered` for one week
and for all time, each under 3 s as a whole CLI process at 5,000,000 messages on PostgreSQL,
without the import getting slower. Run from the project root:

    nice -n 5 .venv/bin/python benchmarks/bench_kept_pg.py                 # import once, reports
    nice -n 5 .venv/bin/python benchmarks/bench_kept_pg.py --src /tmp/base/src --label before
    nice -n 5 .venv/bin/python benchmarks/bench_kept_pg.py --label after --vacuum
    .venv/bin/python benchmarks/bench_kept_pg.py --table before after      # side by side

Data: bench_scale.py's 5x store (examples/generate.py, 200 reps, 5 x 52 weeks; the week
reported is its benchmarked week, 2027-08-16..23 New York time, as of 2027-08-25), with
bench_scale's generated config less its form rules (``[[leads.forms]]``): with form rules,
or label filters, the reports pair messages instead of reading the kept tables
(``analysis.kept.state_for``).

The PostgreSQL cluster (tests/pg.py's settings: trust on loopback, fsync off) lives in
WORKDIR/pg and is kept between runs (the import of 5M messages takes over ten minutes); it
is started for a run and stopped at its end. The first run, or ``--import``, imports the
mbox into a fresh database with `replytime import` (msg/s, peak RSS of the CLI and of the
server's processes). Then each report runs --repeat times (best kept), each its own process:
wall time, CPU, peak RSS of the CLI (wait4) and the server's summed PSS while it runs.
``--src DIR`` runs the code under DIR (PYTHONPATH) instead of the installed package;
``--label`` names the run: outputs go to WORKDIR/out/LABEL/, figures to WORKDIR/results.jsonl,
and ``--table A B`` prints two labels side by side and compares their outputs byte for byte.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale  # noqa: E402 - the benchmarks directory is not a package

ROOT = bench_scale.ROOT
DATABASE = "kept"

# (step, report arguments; "WEEK" stands for --since/--until of the benchmarked week)
REPORTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("weekly", ("weekly",)),
    *((f"{kind} {when}", (kind, *(("WEEK",) if when == "week" else ())))
      for kind in ("reps", "leads", "volume", "threads", "sla", "unanswered")
      for when in ("week", "all time")),
)


def config_without_forms(src: Path, dest: Path) -> Path:
    """``src`` less its ``[[leads.forms]]`` tables (and checked to have no label filter)."""
    out, skipping = [], False
    for line in src.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            skipping = line.strip() == "[[leads.forms]]"
        if not skipping:
            out.append(line)
    text = "\n".join(out) + "\n"
    leads = tomllib.loads(text).get("leads", {})
    assert "forms" not in leads and "labels" not in leads, leads
    dest.write_text(text, encoding="utf-8")
    return dest


# -- the kept cluster ------------------------------------------------------------------------
class Cluster:
    """A PostgreSQL cluster with its data in ``root``/data, kept between runs."""

    def __init__(self, root: Path) -> None:
        sys.path.insert(0, str(ROOT))
        from tests import pg

        self.pg = pg
        self.root = root
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.attached = False  # to a server this process did not start (not stopped here)

    def _as_server(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.getuid() == 0 else argv

    def start(self) -> Cluster:
        bin_ = self.pg.bindir()
        data = self.root / "data"
        self.root.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        if not (data / "PG_VERSION").exists():
            subprocess.run(self._as_server([
                str(bin_ / "initdb"), "-D", str(data), "-U", self.pg.USER, "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync"]), check=True, capture_output=True)
        running = data / "postmaster.pid"  # a server already running here (--serve): use it
        if running.exists():
            self.port = int(running.read_text().split("\n")[3])
            if self._ready(bin_):
                self.attached = True
                return self
        self.port = self.pg.free_port()
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(self._as_server([
                str(bin_ / "postgres"), "-D", str(data), "-p", str(self.port),
                "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200",
            ]), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120  # recovery after a killed run can take a while
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"postgres exited: see {self.root / 'server.log'}")
            if self._ready(bin_):
                return self
            time.sleep(0.2)
        self.stop()
        sys.exit(f"postgres did not answer: see {self.root / 'server.log'}")

    @property
    def pid(self) -> int:
        """The postmaster's pid (its backends are its children)."""
        return int((self.root / "data" / "postmaster.pid").read_text().split("\n")[0])

    def _ready(self, bin_: Path) -> bool:
        return subprocess.run([str(bin_ / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                               str(self.port)], check=False).returncode == 0

    def url(self, database: str) -> str:
        return f"postgresql://{self.pg.USER}@127.0.0.1:{self.port}/{database}"

    def exists(self, database: str) -> bool:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (database,)).fetchone() is not None

    def recreate(self, database: str) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            name = sql.Identifier(database)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        return self.url(database)

    def stop(self) -> None:
        """Fast shutdown; the data directory stays."""
        if self.attached:
            return
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(120)
        self.proc = None


@contextlib.contextmanager
def cluster(root: Path) -> Iterator[Cluster]:
    c = Cluster(root).start()
    try:
        yield c
    finally:
        c.stop()


def sizes(url: str) -> dict[str, int]:
    """Rows of the tables the reports read (for the record)."""
    import psycopg

    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                for t in ("messages", "threads", "leads", "lead_blocks", "message_volume")}


# -- the run ----------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kpg"))
    ap.add_argument("--unit", type=int, default=1_000_000)
    ap.add_argument("--weeks", type=int, default=52)
    ap.add_argument("--multiple", type=int, default=5, help="store size, in units")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--src", type=Path, help="run the replytime under this src/ directory")
    ap.add_argument("--label", default="run", help="name of this run's figures and outputs")
    ap.add_argument("--import", dest="reimport", action="store_true",
                    help="import into a fresh database even if one is there")
    ap.add_argument("--vacuum", action="store_true", help="VACUUM ANALYZE before the reports")
    ap.add_argument("--only", nargs="*", default=[], help="only the steps starting so")
    ap.add_argument("--max-minutes", type=float, default=60.0)
    ap.add_argument("--max-rss-gb", type=float, default=14.0)
    ap.add_argument("--serve", action="store_true",
                    help="start the cluster and wait (runs meanwhile use it; Ctrl-C stops it)")
    ap.add_argument("--table", nargs="+", metavar="LABEL", help="print these runs' figures")
    opts = ap.parse_args()
    work = opts.workdir / f"u{opts.unit}-w{opts.weeks}-r{opts.reps}"
    work.mkdir(parents=True, exist_ok=True)
    if opts.table:
        table(work, opts.table)
        return
    if opts.serve:  # for profiling by hand between runs
        with cluster(opts.workdir / "pg") as pg, contextlib.suppress(KeyboardInterrupt):
            print(pg.url(DATABASE), flush=True)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            signal.pause()
        return
    meta = bench_scale.prepare(work, opts.unit, opts.weeks, opts.reps, [opts.multiple])
    config = config_without_forms(Path(meta["config"]), work / "replytime-noforms.toml")
    size = opts.unit * opts.multiple
    mbox = work / f"{size}.mbox"
    since, until = meta["week"]
    out_dir = work / "out" / opts.label
    out_dir.mkdir(parents=True, exist_ok=True)
    src = opts.src.resolve() if opts.src else None
    state = (f"{src} (PYTHONPATH)" if src else "installed") + f"; {bench_scale.source_state()}"
    print(f"{size:,} messages; week {since}..{until}, as of {meta['as_of']}; source {state}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)

    with cluster(opts.workdir / "pg") as pg:
        limits = (opts.max_rss_gb * 1024, opts.max_minutes * 60, pg.pid)

        def record(step: str, r: bench_scale.Run, **extra: Any) -> None:
            row = {"label": opts.label, "size": size, "step": step, "wall_s": round(r.wall, 3),
                   "cpu_s": round(r.cpu, 2), "rss_mb": round(r.rss_mb),
                   "server_mb": round(r.server_mb), "load": [round(x, 2) for x in r.load],
                   "stopped": r.stopped, "source": state,
                   "when": datetime.now(UTC).isoformat(timespec="seconds"), **extra}
            with open(work / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            rate = f" {extra['msg_s']:>7,} msg/s" if extra.get("msg_s") else ""
            walls = " ".join(f"{w:.2f}" for w in extra.get("walls", ()))
            print(f"{step:22s} {r.wall:8.2f}s{rate}  cpu {r.cpu:6.1f}s  RSS {r.rss_mb:6,.0f} MB  "
                  f"server {r.server_mb:6,.0f} MB  load {r.load[0]:.2f}  [{walls}] {r.stopped}",
                  flush=True)

        if opts.reimport or not pg.exists(DATABASE):
            url = pg.recreate(DATABASE)
            with open(mbox, "rb") as f:  # warm the page cache: the import reads, not the disk
                while f.read(1 << 24):
                    pass
            r = bench_scale.run(["--config", str(config), "--db", url, "import", str(mbox),
                                 "--account", "scale"], *limits, src=src)
            m = re.search(r"imported (\d+) messages", r.stderr)
            n = int(m.group(1)) if m else 0
            record("import", r, messages=n, msg_s=round(n / r.wall) if n else None,
                   tables=sizes(url))
            if r.stopped:
                return
        url = pg.url(DATABASE)
        if opts.vacuum:
            t = time.perf_counter()
            bench_scale._vacuum(url)
            print(f"VACUUM ANALYZE: {time.perf_counter() - t:.1f}s", flush=True)
        base = ["--config", str(config), "--db", url]
        for step, args in REPORTS:
            if opts.only and not any(step.startswith(o) for o in opts.only):
                continue
            argv = ["report", *(a for a in args if a != "WEEK"), "--format", "csv",
                    "--as-of", meta["as_of"]]
            if "WEEK" in args:
                argv += ["--since", since, "--until", until]
            runs, name = [], step.replace(" ", "-")
            for i in range(opts.repeat):
                runs.append(bench_scale.run([*base, *argv], *limits, src=src,
                                            out_path=out_dir / f"{name}.{i}.csv"))
                if runs[-1].stopped:
                    break
            best = min(runs, key=lambda x: (bool(x.stopped), x.wall))
            parts = [out_dir / f"{name}.{i}.csv" for i in range(len(runs))]
            done = [p for p, r in zip(parts, runs, strict=True) if not r.stopped]
            # Compared as files: a big output read in here would count in every later
            # report's peak RSS (see bench_scale.run).
            if any(not filecmp.cmp(done[0], p, shallow=False) for p in done[1:]):
                print(f"{step}: the runs printed different outputs", flush=True)
            for part, r in zip(parts, runs, strict=True):  # keep the best run's
                if r is best and not r.stopped:
                    part.replace(out_dir / f"{name}.csv")
                else:
                    part.unlink()
            record(step, best, walls=[round(x.wall, 3) for x in runs],
                   server_peak_mb=round(max(x.server_mb for x in runs)))
    print(f"(results appended to {work / 'results.jsonl'}, outputs in {out_dir})")


def table(work: Path, labels: list[str]) -> None:
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:  # a rerun replaces the earlier figure
        if row.get("label") in labels:
            latest[(row["label"], row["step"])] = row

    def cell(row: dict[str, Any] | None) -> str:
        if row is None:
            return ""
        if row["stopped"]:
            return row["stopped"]
        rate = f", {row['msg_s']:,} msg/s" if row.get("msg_s") else ""
        return (f"{row['wall_s']:.2f} s{rate}, {row['rss_mb']:,} MB "
                f"(server {row['server_mb']:,} MB), load {row['load'][0]:.2f}")

    print("| step | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for step in ["import", *(s for s, _ in REPORTS)]:
        cells = [cell(latest.get((label, step))) for label in labels]
        if any(cells):
            print(f"| {step} | " + " | ".join(cells) + " |")
    outs = [work / "out" / label for label in labels]
    for name in sorted({p.name for d in outs if d.exists() for p in d.glob("*.csv")}):
        files = [d / name for d in outs if (d / name).exists()]
        same = all(filecmp.cmp(files[0], f, shallow=False) for f in files[1:])
        print(f"{name}: {'identical' if same else 'DIFFERS'} in "
              f"{', '.join(f.parent.name for f in files)} ({files[0].stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
