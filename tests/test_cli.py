"""The console script as cron jobs and analysts call it: formats, files, exit codes."""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from tests.mailbuilder import TEAM_TOML, Mailbox, at

SCRIPT = Path(sys.executable).with_name("replytime")
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REPLYTIME_")}
    full_env.update({"NO_COLOR": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=120)


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A cache with three leads (two answered) and its config file."""
    mb = Mailbox(tmp_path)
    l1 = mb.send("Pat <pat@client.example>", "sales@acme.example", at(0, 9))
    mb.send("alice@acme.example", "pat@client.example", at(0, 9, 30), parent=l1)
    l2 = mb.send("=cmd@evil.example", "bob@acme.example", at(1, 9), subject="Quote")
    mb.send("bob@acme.example", "=cmd@evil.example", at(1, 11), parent=l2)
    mb.send("quinn@other.example", "carol@acme.example", at(2, 9), subject="Hello")
    mb.analysis().cache.close()
    cfg = tmp_path / "replytime.toml"
    cfg.write_text(TEAM_TOML)
    return tmp_path / "cache.sqlite", cfg


def report(ws: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess[str]:
    db, cfg = ws
    return run("--db", str(db), "--config", str(cfg), "report", *args,
               "--as-of", "2026-11-05T00:00:00+00:00")


def test_help_teaches() -> None:
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("init", "auth", "import", "sync", "status", "report", "demo"):
        assert cmd in r.stdout
    r = run("report", "--help")
    assert "--since" in r.stdout and "last-week" in r.stdout and "--business" in r.stdout


def test_version_is_single_sourced() -> None:
    """`--version`, the built package's metadata (pyproject.toml reads it dynamically) and
    the changelog all take the version from replytime.__version__."""
    import replytime

    r = run("--version")
    assert (r.returncode, r.stdout) == (0, f"replytime {replytime.__version__}\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "replytime.__version__"}
    # The newest changelog entry is this version, or an Unreleased section that names it
    # (in its opening lines) above the dated releases.
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    sections = re.split(r"(?m)^## ", changelog)[1:]
    if sections[0].startswith("[Unreleased]"):
        intro = sections[0].split("\n### ")[0]
        assert f"`{replytime.__version__}`" in intro, intro
        assert re.match(r"\[\d+\.\d+\.\d+\] - \d{4}-\d\d-\d\d", sections[1])
    else:
        assert sections[0].startswith(f"[{replytime.__version__}] - "), sections[0][:40]


def test_demo_runs_on_the_package_data(tmp_path: Path) -> None:
    """`replytime demo` reads the example from the package (replytime/demo/), not from a
    source checkout's examples/, so it works from an installed wheel; run from elsewhere."""
    r = run("demo", "--db", str(tmp_path / "demo.sqlite"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Imported 898 example messages" in r.stdout
    for rep in ("Alice Ng", "Marcus Reed", "Diego Alvarez", "Hannah Clarke", "Tom Okafor"):
        assert rep in r.stdout
    assert re.search(r"TOTAL +152 +88%", r.stdout)


def test_shell_completion() -> None:
    """typer's completion options are on, and completion answers through our entry point."""
    r = run("--help")
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout
    r = run(env={"_REPLYTIME_COMPLETE": "complete_bash", "COMP_WORDS": "replytime report ",
                 "COMP_CWORD": "2"})
    assert r.returncode == 0, r.stderr
    assert {"reps", "leads", "unanswered", "weekly"} <= set(r.stdout.split())
    r = run(env={"_REPLYTIME_COMPLETE": "complete_zsh",
                 "_TYPER_COMPLETE_ARGS": "replytime report --fail-if-"})
    assert "--fail-if-over" in r.stdout


def test_reps_csv_exact(workspace: tuple[Path, Path]) -> None:
    r = report(workspace, "reps", "--format", "csv")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(io.StringIO(r.stdout))
    assert list(df.columns)[:12] == ["rep", "team", "leads", "answered", "unanswered",
                                     "reply_rate", "mean_s", "median_s", "p90_s", "min_s",
                                     "max_s", "within_sla"]
    rows = df.set_index("rep")
    assert rows.loc["Alice", "median_s"] == 1800 and rows.loc["Alice", "within_sla"] == 1.0
    assert rows.loc["Bob", "median_s"] == 7200 and rows.loc["Bob", "within_sla"] == 0.0
    assert rows.loc["Carol", "unanswered"] == 1 and rows.loc["Carol", "reply_rate"] == 0.0
    assert "TOTAL" not in rows.index  # machine formats carry no totals row


def test_leads_formats_agree(workspace: tuple[Path, Path], tmp_path: Path) -> None:
    as_json = json.loads(report(workspace, "leads", "--format", "json").stdout)
    lines = report(workspace, "leads", "--format", "jsonl").stdout.splitlines()
    assert [json.loads(x) for x in lines] == as_json
    assert as_json[0]["lead_time"] == "2026-11-02T09:00:00+00:00"
    assert as_json[0]["reply_time"] == "2026-11-02T09:30:00+00:00"
    assert as_json[0]["response_s"] == 1800 and as_json[0]["lead_message_id"] == "m1@test.example"
    assert as_json[2]["reply_message_id"] is None and as_json[2]["answered"] is False
    out = tmp_path / "leads.parquet"
    r = report(workspace, "leads", "--format", "parquet", "--output", str(out))
    assert r.returncode == 0, r.stderr
    pq = pd.read_parquet(out)
    assert pq["response_s"].tolist()[:2] == [1800, 7200]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".leads.parquet")]
    md = report(workspace, "sla", "--format", "markdown").stdout
    assert "| bucket | leads | share |" in md


def test_csv_neutralises_formulas_unless_raw(workspace: tuple[Path, Path]) -> None:
    safe = report(workspace, "leads", "--format", "csv").stdout
    assert "'=cmd@evil.example" in safe
    raw = report(workspace, "leads", "--format", "csv", "--raw-csv").stdout
    assert ",=cmd@evil.example," in raw


def test_table_has_totals_and_human_durations(workspace: tuple[Path, Path]) -> None:
    r = report(workspace, "reps", "--format", "table")
    assert r.returncode == 0, r.stderr
    assert "TOTAL" in r.stdout and "30m" in r.stdout and "2h 00m" in r.stdout
    assert "\x1b[" not in r.stdout  # NO_COLOR / not a TTY


def test_unanswered_and_volume(workspace: tuple[Path, Path]) -> None:
    u = pd.read_csv(io.StringIO(report(workspace, "unanswered", "--format", "csv").stdout))
    assert u["lead_from"].tolist() == ["quinn@other.example"]
    assert u["age_s"].tolist() == [15 * 3600]  # 2026-11-04 09:00 to the as-of 11-05 00:00
    v = pd.read_csv(io.StringIO(report(workspace, "volume", "--format", "csv", "--since",
                                       "2026-11-02", "--until", "2026-11-05").stdout))
    assert v.to_dict("list") == {
        "date": ["2026-11-02", "2026-11-03", "2026-11-04"],
        "leads": [1, 1, 1],
        "first_replies": [1, 1, 0],
        "inbound": [1, 1, 1],
        "outbound": [1, 1, 0],
        "messages": [2, 2, 1],
    }
    t = pd.read_csv(io.StringIO(report(workspace, "threads", "--format", "csv").stdout))
    assert t.to_dict("list") == {"bucket": ["1", "2", "3", "4-5", "6-10", "11+"],
                                 "threads": [1, 2, 0, 0, 0, 0]}


def test_rep_and_team_filters(workspace: tuple[Path, Path]) -> None:
    df = pd.read_csv(io.StringIO(report(workspace, "leads", "--format", "csv", "--team",
                                        "East").stdout))
    assert sorted(df["rep"]) == ["Alice", "Bob"]
    r = report(workspace, "reps", "--rep", "Zoe")
    assert r.returncode == 2 and "unknown rep 'Zoe'" in r.stderr
    assert r.stderr.count("\n") == 1


def test_fail_if_targets(workspace: tuple[Path, Path]) -> None:
    r = report(workspace, "reps", "--format", "csv", "--fail-if-over", "1h")
    assert r.returncode == 1 and "Bob median 2h 00m > 1h 00m" in r.stderr
    assert report(workspace, "reps", "--format", "csv", "--fail-if-over", "3h").returncode == 0
    r = report(workspace, "reps", "--format", "csv", "--rep", "Alice", "--fail-if-under", "0.9")
    assert r.returncode == 0, r.stderr
    r = report(workspace, "reps", "--format", "csv", "--fail-if-under", "0.5")
    assert r.returncode == 1 and "team within SLA 33% < 50%" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterdayish"], "is not a date or period"),
        (["--as-of", "soon"], "--as-of"),
        (["--fail-if-over", "fast"], "is not a duration"),
    ],
)
def test_bad_arguments_exit_2(workspace: tuple[Path, Path], args: list[str], message: str) -> None:
    db, cfg = workspace
    r = run("--db", str(db), "--config", str(cfg), "report", "reps", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_missing_and_corrupt_cache(tmp_path: Path) -> None:
    r = run("--db", str(tmp_path / "none.sqlite"), "report", "reps", cwd=tmp_path)
    assert r.returncode == 2 and "no cache at" in r.stderr
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    r = run("--db", str(bad), "status", cwd=tmp_path)
    assert r.returncode == 2 and "not a usable replytime cache" in r.stderr
    assert r.stderr.count("\n") == 1


def test_init_writes_a_valid_commented_template(tmp_path: Path) -> None:
    r = run("init", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "replytime.toml").read_text()
    assert text.count("#") > 20
    tomllib.loads(text)
    from replytime.config import load_config

    assert load_config(tmp_path / "replytime.toml").reps[0].name == "Alice Ng"
    r = run("init", cwd=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "replytime.toml").write_text('[team]\ntimezone = "Mars/Olympus"\n')
    r = run("status", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == "replytime: error: config: team.timezone: unknown time zone " \
                       "'Mars/Olympus'\n"


def test_unknown_holiday_code_is_one_line_exit_2(workspace: tuple[Path, Path]) -> None:
    # Not checked on loading (config.Config.check_holidays) but before any lead is read or
    # built without a kept table proving the codes: an unused schedule's code too.
    db, cfg = workspace
    cfg.write_text(TEAM_TOML + '[schedules.spare]\ntimezone = "UTC"\nholidays = ["US", "XX"]\n')
    for args in (["status"], ["report", "reps", "--as-of", "2026-11-05T00:00:00+00:00"]):
        r = run("--db", str(db), "--config", str(cfg), *args)
        assert (r.returncode, r.stdout) == (2, ""), r.stderr
        assert r.stderr == "replytime: error: config: schedules.spare.holidays: unknown " \
                           "holiday calendar 'XX' (use e.g. US, US-CA, DE-BY)\n"
    cfg.write_text(TEAM_TOML + '[schedules.spare]\ntimezone = "UTC"\nholidays = ["US"]\n')
    assert run("--db", str(db), "--config", str(cfg), "status").returncode == 0


def test_status_counts(workspace: tuple[Path, Path]) -> None:
    db, cfg = workspace
    r = run("--db", str(db), "--config", str(cfg), "status", "--format", "json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["messages"] == 5 and info["threads"] == 3 and info["leads"] == 3
    assert info["no_time"] == 0 and info["skipped"] == 0
    assert info["accounts"][0]["name"] == "test"


def test_environment_variables_select_config_and_db(workspace: tuple[Path, Path]) -> None:
    db, cfg = workspace
    r = run("status", "--format", "json",
            env={"REPLYTIME_DB": str(db), "REPLYTIME_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["leads"] == 3


def test_stale_leads_and_fail_if_any(workspace: tuple[Path, Path]) -> None:
    # Carol's lead of 2026-11-04 09:00 is 15h old at the as-of time.
    r = report(workspace, "unanswered", "--format", "csv", "--calendar", "--older-than", "14h",
               "--fail-if-any")
    assert r.returncode == 1 and "1 unanswered lead(s) older than 14h" in r.stderr
    r = report(workspace, "unanswered", "--format", "csv", "--calendar", "--older-than", "15h",
               "--fail-if-any")
    assert r.returncode == 0 and pd.read_csv(io.StringIO(r.stdout)).empty


def test_compare_periods(workspace: tuple[Path, Path]) -> None:
    r = report(workspace, "compare", "--format", "csv", "--a", "2026-11-02..2026-11-03",
               "--b", "2026-11-03..2026-11-05")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(io.StringIO(r.stdout)).set_index("rep")
    assert list(df.columns[:8]) == ["a_leads", "b_leads", "a_median_s", "b_median_s",
                                    "median_p", "a_within_sla", "b_within_sla", "sla_p"]
    assert df.loc["TEAM", "a_leads"] == 1 and df.loc["TEAM", "b_leads"] == 2
    assert df.loc["TEAM", "a_median_s"] == 1800 and df.loc["TEAM", "b_median_s"] == 7200
    assert "fewer than 10 leads" in df.loc["TEAM", "note"]
    r = report(workspace, "compare", "--a", "last-week")
    assert r.returncode == 2 and "needs both --a" in r.stderr


def test_leads_all_replies(workspace: tuple[Path, Path]) -> None:
    r = report(workspace, "leads", "--format", "json", "--all-replies")
    blocks = json.loads(r.stdout)
    assert [b["response_s"] for b in blocks] == [1800, 7200, None]


def test_the_command_leaves_the_cache_whole_in_one_file(tmp_path: Path) -> None:
    """The console script exits without interpreter teardown; it closes the cache first, so
    the write-ahead log is checkpointed into the file and removed: copying the .sqlite file
    alone copies everything. Exit codes still come through."""
    db = tmp_path / "c.sqlite"
    example = Path(__file__).resolve().parents[1] / "examples" / "mailbox.mbox"
    cfg = str(example.with_name("replytime.toml"))
    r = run("--config", cfg, "--db", str(db), "import", str(example))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.sqlite", "c.sqlite.locks"]
    r = run("--config", cfg, "--db", str(db), "report", "reps", "--format", "csv", "--rep",
            "nobody")
    assert r.returncode == 2 and "nobody" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.sqlite", "c.sqlite.locks"]
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(db.read_bytes())
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 898
        assert conn.execute("SELECT count(*) FROM messages WHERE thread_id IS NULL"
                            ).fetchone()[0] == 0


def test_progress_bar_draws_on_a_terminal() -> None:
    """rich is only imported for a bar; the bar still counts and draws when enabled."""
    from replytime.progress import Progress

    with Progress("importing", 10, enabled=True) as progress:
        progress.advance(4, note="4 files")
        progress.set_total(12)
        progress.advance(8)
    assert progress.done == 12 and progress._bar is not None
    task = progress._bar.tasks[0]
    assert (task.completed, task.total, task.fields["note"]) == (12, 12, "4 files")
