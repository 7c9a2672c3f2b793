"""Lead counts against ground truth: replytime's `report leads` compared with the leads that
examples/generate.py planned (its expected_leads.csv, written from its own plan).

For each shape, generate.py writes a mailbox, its ground truth and a matching config; each
replytime source tree imports the mailbox into a fresh cache and runs `report leads --format
csv --since 2000-01-01 --as-of <export time>`, every command its own `python -c` process
with PYTHONPATH set to that tree (the CLI entry `replytime.cli:run`). Run from the project
root:

    .venv/bin/python benchmarks/bench_truth.py                        # this checkout's src
    git worktree add /tmp/prefix-src ec6bf04                          # the code before issue 15
    .venv/bin/python benchmarks/bench_truth.py --before /tmp/prefix-src/src
    .venv/bin/python benchmarks/bench_truth.py --shapes example,robots --keep

Per shape and tree: expected leads, found (same lead message id), missing, extra, and exact
(found with the same reply message id, rep and response seconds), then every rep whose
leads, answered leads or median response differ from the ground truth. With --before, one
table puts the two trees side by side.

The export time (--as-of): the generator's (2026-11-06T20:00Z) for a mailbox it writes in
full; for one cut short by --messages, the last message's time plus one second (the ground
truth then counts a reply not yet written as no reply).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ROOT / "examples" / "generate.py"
EXPORT = datetime(2026, 11, 6, 20, tzinfo=UTC)  # generate.py's default export time
CLI = "from replytime.cli import run; run()"

# name -> generate.py arguments. "busy" is the example's team of five with ten times the
# threads; the robot-heavy shapes add the issue 15 pattern (--robots, --same-subject).
SHAPES: dict[str, list[str]] = {
    "example": [],
    "team-100k": ["--messages", "100000", "--reps", "20"],
    "busy-robots": ["--threads", "3000", "--robots", "0.6", "--same-subject", "0.4"],
    "team-100k-robots": ["--messages", "100000", "--reps", "20", "--robots", "0.3",
                         "--same-subject", "0.2"],
}


@dataclass
class Result:
    messages: int
    expected: int
    found: int = 0
    missing: int = 0
    extra: int = 0
    exact: int = 0
    seconds: float = 0.0
    reps: list[str] = field(default_factory=list)  # per-rep lines that differ


def generate(shape: str, args: list[str], workdir: Path) -> tuple[Path, Path, Path, str, int]:
    """Mailbox, ground truth, config, --as-of, messages."""
    mbox, truth, config = (workdir / f"{shape}{ext}" for ext in (".mbox", ".csv", ".toml"))
    subprocess.run([sys.executable, str(GENERATE), "--out", str(mbox), "--expected", str(truth),
                    "--config-out", str(config), *args], check=True)
    messages, last = mbox_summary(mbox)
    as_of = EXPORT if "--messages" not in args else last + timedelta(seconds=1)
    return mbox, truth, config, as_of.isoformat(), messages


def mbox_summary(path: Path) -> tuple[int, datetime]:
    """Messages in an mbox written by generate.py, and the time on its last "From " line."""
    n, last = 0, b""
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"From "):
                n, last = n + 1, line
    stamp = last.decode().split(" ", 2)[2].strip()  # asctime of the message's UTC time
    return n, datetime.strptime(stamp, "%a %b %d %H:%M:%S %Y").replace(tzinfo=UTC)


def replytime(src: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", CLI, *args], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"replytime {' '.join(args[:6])} failed ({proc.returncode}):\n"
                         f"{proc.stderr}")
    return proc.stdout


def read_csv(text: str) -> dict[str, dict[str, str]]:
    return {r["lead_message_id"]: r for r in csv.DictReader(text.splitlines())}


def per_rep(rows: dict[str, dict[str, str]]) -> dict[str, tuple[int, int, float | None]]:
    """rep -> (leads, answered, median response_s)."""
    leads: Counter[str] = Counter()
    times: dict[str, list[int]] = {}
    for r in rows.values():
        leads[r["rep"]] += 1
        if r["response_s"] not in ("", "nan"):
            times.setdefault(r["rep"], []).append(int(float(r["response_s"])))
    return {rep: (n, len(times.get(rep, [])),
                  round(median(times[rep]), 1) if rep in times else None)
            for rep, n in leads.items()}


def measure(src: Path, mbox: Path, truth: Path, config: Path, as_of: str, messages: int,
            workdir: Path) -> Result:
    db = workdir / "cache.sqlite"
    for p in workdir.glob("cache.sqlite*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    began = time.perf_counter()
    replytime(src, "--config", str(config), "--db", str(db), "import", str(mbox),
              "--account", "bench")
    got = read_csv(replytime(src, "--config", str(config), "--db", str(db), "report", "leads",
                             "--format", "csv", "--since", "2000-01-01", "--as-of", as_of))
    took = time.perf_counter() - began
    want = read_csv(truth.read_text(encoding="utf-8"))
    res = Result(messages, len(want), seconds=took)
    res.found = len(want.keys() & got.keys())
    res.missing = len(want.keys() - got.keys())
    res.extra = len(got.keys() - want.keys())

    def same(e: dict[str, str], g: dict[str, str]) -> bool:
        def seconds(v: str) -> str:
            return "" if v in ("", "nan") else str(int(float(v)))
        return (e["reply_message_id"] == g["reply_message_id"] and e["rep"] == g["rep"]
                and seconds(e["response_s"]) == seconds(g["response_s"]))

    res.exact = sum(same(want[k], got[k]) for k in want.keys() & got.keys())
    w, g = per_rep(want), per_rep(got)
    for rep in sorted(w.keys() | g.keys()):
        a, b = w.get(rep, (0, 0, None)), g.get(rep, (0, 0, None))
        if a != b:
            med = [f"{m:g} s" if m is not None else "-" for m in (a[2], b[2])]
            res.reps.append(f"{rep}: leads {a[0]} -> {b[0]}, answered {a[1]} -> {b[1]}, "
                            f"median response {med[0]} -> {med[1]}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src",
                    help="replytime source tree to measure (default: this checkout's src)")
    ap.add_argument("--before", type=Path,
                    help="another source tree (e.g. the code before a fix) to measure beside it")
    ap.add_argument("--shapes", default=",".join(SHAPES),
                    help=f"comma-separated, of: {', '.join(SHAPES)}")
    ap.add_argument("--workdir", type=Path, help="default: a temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the workdir")
    opts = ap.parse_args(argv)
    shapes = [s for s in opts.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shape(s): {', '.join(unknown)}")
    trees = {"after": opts.src.resolve()}
    if opts.before is not None:
        trees = {"before": opts.before.resolve(), **trees}
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="bench-truth-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, dict[str, Result]]] = []
    try:
        for shape in shapes:
            mbox, truth, config, as_of, messages = generate(shape, SHAPES[shape], workdir)
            results = {}
            for name, src in trees.items():
                r = results[name] = measure(src, mbox, truth, config, as_of, messages, workdir)
                print(f"{shape} [{name}: {src}] {r.messages:,} messages, as of {as_of}: "
                      f"expected {r.expected}, found {r.found}, missing {r.missing}, "
                      f"extra {r.extra}, exact {r.exact} ({r.seconds:.1f} s)", flush=True)
                for line in r.reps:
                    print(f"    {line}")
            rows.append((shape, results))
    finally:
        if not opts.keep and opts.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif opts.keep:
            print(f"kept {workdir}", file=sys.stderr)
    print()
    names = list(trees)
    cols = ["found", "missing", "extra", "exact"]
    head = ["shape", "messages", "expected leads"] + [f"{c} {n}" for c in cols for n in names]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for shape, results in rows:
        first = results[names[0]]
        cells = [shape, f"{first.messages:,}", str(first.expected)]
        cells += [str(getattr(results[n], c)) for c in cols for n in names]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
