"""The `replytime` command: a thin layer over the library (api, connectors, render)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from replytime import __version__
from replytime.errors import CheckFailed, UsageError

app = typer.Typer(
    help="How fast do your reps answer new leads by email? Local, private, exact.\n\n"
    "Typical use: `replytime init`, edit replytime.toml, `replytime import mail.mbox` or "
    "`replytime sync`, then `replytime report reps --since last-week`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
send_app = typer.Typer(help="Mail a report to the recipients of [delivery].",
                       no_args_is_help=True)
app.add_typer(send_app, name="send")


@dataclass
class Globals:
    config: str | None = None
    db: str | None = None
    debug: bool = False


G = Globals()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"replytime {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    config: Annotated[str | None, typer.Option(
        "--config", envvar="REPLYTIME_CONFIG", metavar="FILE",
        help="Config file. Default: ./replytime.toml, then ~/.config/replytime/config.toml.",
    )] = None,
    db: Annotated[str | None, typer.Option(
        "--db", envvar="REPLYTIME_DB", metavar="FILE-or-URL",
        help="Cache file or postgresql://user@host:port/db URL. "
        "Default: ~/.local/share/replytime/cache.sqlite.",
    )] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit."
    )] = False,
) -> None:
    G.config, G.db, G.debug = config, db, debug


def _config() -> Any:
    from replytime.config import load_config

    return load_config(G.config)


def _team(cfg: Any, *, require: bool) -> None:
    """A config that names no internal address: refused where no number could mean
    anything (reports, explain, send, alert), a warning on stderr after work that still
    stands (import, status, export: the headers are cached the same). See
    docs/configuration.md, "Without a team"."""
    from replytime.runner import warn_without_team

    if require and (problem := cfg.team_problem()):
        raise UsageError(problem)
    warn_without_team(cfg, _summary)


def _summary(text: str) -> None:
    typer.echo(text, err=True)


# -- init -----------------------------------------------------------------------------------
@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path(
        "replytime.toml"
    ),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented config template to PATH (default ./replytime.toml)."""
    from replytime.config import TEMPLATE
    from replytime.output.render import atomic_write

    if path.exists() and not force:
        raise UsageError(f"{path} already exists; use --force to overwrite it")
    atomic_write(path, lambda f: f.write(TEMPLATE), binary=False)
    _summary(f"wrote {path}: edit internal_domains and [[reps]], then run `replytime import`")


# -- auth -----------------------------------------------------------------------------------
@app.command("auth", no_args_is_help=True,
             context_settings={"allow_extra_args": True})
def auth(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(metavar="ACCOUNT",
                                           help="Account name from the config.")],
    no_browser: Annotated[bool, typer.Option(
        "--no-browser", help="Gmail, for servers: print the URL and paste the code back."
    )] = False,
    metadata: Annotated[bool, typer.Option(
        "--metadata", help="Gmail: ask only for gmail.metadata (no search queries possible)."
    )] = False,
) -> None:
    """Sign in to a mail ACCOUNT once and save its token (mode 0600).

    Gmail: Google's OAuth flow. Microsoft 365 / Outlook.com (type microsoft, or imap with
    oauth = "microsoft"): Microsoft's device-code flow; open the URL it prints on any
    device and enter the code. `auth gmail ACCOUNT` is the older spelling."""
    legacy_name = ctx.args[0] if len(ctx.args) == 1 else None
    if len(ctx.args) > 1:
        raise UsageError(f"unexpected arguments {' '.join(ctx.args)!r}")
    if legacy_name is not None:
        if account != "gmail":
            raise UsageError(f"unexpected argument {legacy_name!r}: use `replytime auth ACCOUNT`")
        account = legacy_name
    cfg = _config()
    acct = cfg.account(account)
    if legacy_name is not None and acct.type != "gmail":
        raise UsageError(f"account {account!r} is of type {acct.type}, not gmail")
    if acct.type == "gmail":
        from replytime.sources import gmail

        gmail.authorize(acct, no_browser=no_browser, scope="metadata" if metadata else None)
        _summary(f"authorised {account}")
    elif acct.microsoft_sign_in:
        from replytime.sources import msauth

        # The [delivery] account signs in for SMTP.Send too (docs/configuration.md,
        # "`[delivery]`").
        smtp = cfg.delivery is not None and cfg.delivery.oauth_account == acct.name
        who = msauth.device_sign_in(acct, smtp=smtp)
        _summary(f"authorised {account} as {who}")
    else:
        raise UsageError(f"account {account!r} ({acct.type}) has no sign-in: only gmail, "
                         "microsoft and imap accounts with oauth = \"microsoft\" do")


# -- import / sync --------------------------------------------------------------------------
@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(
        help="mbox files (Google Takeout too), Maildir folders, .eml files, or directories."
    )],
    account: Annotated[str, typer.Option(
        "--account", help="Name these messages' source in `status`."
    )] = "import",
) -> None:
    """Import mail files into the cache (headers only; bodies are never stored)."""
    # The same function the console script runs without this parser (entry.run)
    from replytime.runner import import_files

    import_files(G.config, G.db, paths, account, _summary)


@app.command()
def sync(
    accounts: Annotated[list[str] | None, typer.Argument(
        help="Accounts to sync (default: every gmail and imap account in the config)."
    )] = None,
    full: Annotated[bool, typer.Option("--full", help="Ignore saved state; sync all.")] = False,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, help="Accounts synced at once (default: min(4, accounts))."
    )] = None,
) -> None:
    """Fetch new mail headers from configured Gmail, IMAP and Microsoft 365 accounts, several
    at once.

    A failing account does not stop the others; the exit code is the worst one."""
    from replytime.syncing import choose_accounts, sync_accounts

    cfg = _config()
    report = sync_accounts(G.db, choose_accounts(cfg, accounts), cfg, jobs=jobs, full=full,
                           echo=_summary, debug=G.debug)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


# -- demo -----------------------------------------------------------------------------------
@app.command()
def demo(
    db: Annotated[Path | None, typer.Option(
        "--db", help="Keep the demo cache here (default: a temporary file)."
    )] = None,
) -> None:
    """Import the bundled example mailbox and print the per-rep report.

    No account or server needed; the commands it runs are printed so you can repeat them.
    """
    import tempfile
    from importlib.resources import as_file, files

    from replytime.api import Analysis, refresh_threads
    from replytime.config import load_config
    from replytime.output.render import rich_table
    from replytime.output.terminal import console
    from replytime.sources.files import import_paths
    from replytime.store import open_cache

    # Package data (replytime/demo/), so an installed wheel has it too.
    example = files("replytime.demo")
    with as_file(example / "mailbox.mbox") as mailbox, \
            as_file(example / "replytime.toml") as cfg_path:
        cfg = load_config(cfg_path)
        target = db or Path(tempfile.mkdtemp(prefix="replytime-demo-")) / "cache.sqlite"
        cache = open_cache(target)
        with cache.lock_account("example"):
            stats = import_paths(cache, [mailbox], account="example", keep=cfg.kept_headers())
    refresh_threads(cache, cfg)
    latest = cache.latest_time_ms()
    as_of = datetime.fromtimestamp(latest / 1000 + 3600, UTC)
    analysis = Analysis(cache, cfg, as_of=as_of)
    con = console()
    con.print(f"Imported {stats.fetched} example messages into {target}.")
    table = analysis.reps(include_total=True)[TABLE_COLUMNS["reps"]]
    con.print(rich_table(
        table, analysis.tz,
        title=f"Response times per rep ({analysis.basis()} time), all example leads",
        caption=f"as of {_when(analysis)}; SLA target "
        f"{_dur(analysis.config.sla_target_s)}",
    ))
    when = as_of.strftime("%Y-%m-%dT%H:%M")
    con.print(
        "Same thing by hand:\n"
        f"  replytime --config {cfg_path} --db {target} import {mailbox}\n"
        f"  replytime --config {cfg_path} --db {target} report reps --as-of {when}\n"
        "Try also: report leads | unanswered | volume | threads | sla, --format csv|json",
        soft_wrap=True,
    )


# -- status ---------------------------------------------------------------------------------
@app.command()
def status(
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """What is cached: messages, threads, leads, sources and data-quality counts."""
    import json

    from replytime.analysis.rethread import kept_lead_counts
    from replytime.periods import utc_now
    from replytime.store import open_cache

    cfg = _config()
    cache = open_cache(G.db, create=False)
    _team(cfg, require=False)
    now = utc_now()
    counts = kept_lead_counts(cache, cfg, int(now.timestamp() * 1000))
    if counts is None:  # leads not kept for this config: matched from the messages
        from replytime.api import Analysis

        counts = Analysis(cache, cfg, as_of=now).lead_counts()
    leads, unanswered, clamped = counts
    info = cache.status()  # after kept_lead_counts: threads are up to date
    info["leads"] = leads
    info["unanswered"] = unanswered
    info["clamped_negative"] = clamped
    info["cache"] = str(cache.where)
    info["schema_version"] = cache.schema_version
    if fmt == "json":
        typer.echo(json.dumps(info, indent=2))
        return
    if fmt != "table":
        raise UsageError("--format: status supports table or json")
    from rich.table import Table

    from replytime.output.terminal import console

    con = console()
    con.print(f"cache        {info['cache']} (schema {info['schema_version']})")
    con.print(f"messages     {info['messages']:,}")
    con.print(f"threads      {info['threads']:,}")
    con.print(f"leads        {info['leads']:,} ({info['unanswered']:,} unanswered now)")
    con.print("data quality "
              f"{info['skipped']:,} unreadable skipped, {info['malformed']:,} malformed headers, "
              f"{info['no_time']:,} without a time, {info['clamped_negative']:,} clamped "
              "negative response times")
    t = Table("source", "type", "messages", "last import/sync (UTC)", header_style="bold")
    for a in info["accounts"]:
        t.add_row(a["name"], a["type"], f"{a['messages']:,}", a["last_sync"] or "never")
    con.print(t)


# -- explain --------------------------------------------------------------------------------
@app.command()
def explain(
    message_id: Annotated[str, typer.Argument(
        metavar="MESSAGE_ID", help="The Message-ID of any message of the thread (angle "
        "brackets optional), as `report leads` prints it.",
    )],
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Judge replies as of this time (default: now), as the reports do.",
    )] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Also say whether the lead falls in this report period.",
    )] = None,
    until: Annotated[str | None, typer.Option("--until", help="End of that period.")] = None,
) -> None:
    """Why a lead, a first reply or a response time is what it is: the thread in time order
    (sender, internal or external, automated and which marker, where it was imported from),
    which rule grouped it, whether it is a lead and why or why not, the first reply and why
    each earlier internal message did not count, and the calendar and business seconds with
    the working hours that counted.

    Example: replytime explain 'm42.1@client.example' --format json
    """
    import json

    from replytime.analysis.explain import explain as explain_thread
    from replytime.store import open_cache

    if fmt not in ("table", "json"):
        raise UsageError("--format: explain supports table or json")
    cache = open_cache(G.db, create=False)
    cfg = _config()
    _team(cfg, require=True)
    e = explain_thread(cache, cfg, message_id, as_of=as_of, since=since, until=until)
    if fmt == "json":
        typer.echo(json.dumps(e.to_dict(), indent=2, ensure_ascii=False))
        return
    from replytime.output.explain import render_explanation
    from replytime.output.terminal import console

    render_explanation(e, console())


# -- export ---------------------------------------------------------------------------------
class ExportFormat(StrEnum):
    parquet = "parquet"


@app.command()
def export(
    directory: Annotated[Path, typer.Argument(
        metavar="DIR", help="Where to write the export: a new or empty directory (or a "
        "previous export, with --force).",
    )],
    fmt: Annotated[ExportFormat, typer.Option(
        "--format", help="parquet: one dataset per table, partitioned by month (UTC).",
    )] = ExportFormat.parquet,
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Judge leads' replies as of this time (default: now).",
    )] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace DIR when it holds a previous replytime export.",
    )] = False,
) -> None:
    """Export messages, threads and leads for DuckDB, Spark or pandas (headers only).

    Writes DIR/messages, DIR/threads and DIR/leads as Hive-partitioned Parquet
    (DIR/leads/month=2026-10/part-0.parquet ...); the leads have the columns of `report
    leads --format csv`. The export appears whole or not at all. Columns: README.md,
    "Export to Parquet". Example: `replytime export exports/acme`, then in DuckDB
    `SELECT rep, count(*) FROM read_parquet('exports/acme/leads/*/*.parquet',
    hive_partitioning=true) GROUP BY rep`.
    """
    from replytime.output.export import export_parquet
    from replytime.progress import Progress

    started = time.monotonic()
    cfg = _config()
    with Progress("exporting months") as progress:
        counts = export_parquet(G.db, cfg, directory, as_of=as_of, force=force,
                                on_month=lambda month: progress.advance(1, note=month))
    months = f"{counts['months']} month" + ("" if counts["months"] == 1 else "s")
    _summary(
        f"exported {counts['messages']:,} messages, {counts['threads']:,} threads and "
        f"{counts['leads']:,} leads ({months}) to {directory} in "
        f"{time.monotonic() - started:.1f}s"
    )
    _team(cfg, require=False)


# -- report ---------------------------------------------------------------------------------
class Kind(StrEnum):
    reps = "reps"
    leads = "leads"
    unanswered = "unanswered"
    volume = "volume"
    threads = "threads"
    sla = "sla"
    compare = "compare"
    weekly = "weekly"


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"
    markdown = "markdown"
    parquet = "parquet"
    html = "html"


# The period and selection options of `report` (and `send weekly`, which reuses them).
SinceOption = Annotated[str | None, typer.Option(
    help="Leads from this time (inclusive): 2026-11-02, 7d, 4w, last-week, this-month."
)]
UntilOption = Annotated[str | None, typer.Option(help="Leads before this time (exclusive).")]
AsOfOption = Annotated[str | None, typer.Option(
    "--as-of", help="Judge replies as of this time (default: now)."
)]
RepOption = Annotated[list[str] | None, typer.Option("--rep", help="Only this rep (repeatable).")]
TeamOption = Annotated[str | None, typer.Option(help="Only this team.")]
BusinessOption = Annotated[bool | None, typer.Option(
    "--business/--calendar",
    help="Business hours or calendar time (default: business when a schedule exists).",
    show_default=False,
)]


# The terminal view keeps to ~100 columns; machine formats carry every column.
TABLE_COLUMNS = {
    "reps": ["rep", "team", "leads", "reply_rate", "median_s", "p90_s", "mean_s",
             "within_sla", "unanswered"],
    "leads": ["lead_time_ms", "lead_from", "rep", "answered", "response_s", "business_s",
              "kind"],
    "unanswered": ["lead_time_ms", "lead_from", "rep", "age_s", "business_age_s"],
}


@app.command()
def report(
    kind: Annotated[Kind, typer.Argument(
        help="reps: per-rep response times; leads: one row per lead; unanswered: the "
        "queue, oldest first; volume: messages per day; threads: thread lengths; sla: "
        "leads per response-time bucket; compare: two periods side by side (--a, --b); "
        "weekly: last full week vs the week before (default period: last-week).",
    )],
    since: SinceOption = None,
    until: UntilOption = None,
    as_of: AsOfOption = None,
    rep: RepOption = None,
    team: TeamOption = None,
    business: BusinessOption = None,
    fmt: Annotated[Format | None, typer.Option(
        "--format", help="Default: table on a terminal, csv otherwise."
    )] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to FILE (atomically) instead of stdout."
    )] = None,
    raw_csv: Annotated[bool, typer.Option(
        "--raw-csv", help="Do not neutralise spreadsheet formulas in CSV cells."
    )] = False,
    older_than: Annotated[str | None, typer.Option(
        "--older-than", metavar="DURATION",
        help="unanswered: only leads waiting longer than this (stale, e.g. 4h, 2d).",
    )] = None,
    fail_if_any: Annotated[bool, typer.Option(
        "--fail-if-any", help="unanswered: exit 1 when the list is not empty (cron alerts).",
    )] = False,
    all_replies: Annotated[bool, typer.Option(
        "--all-replies", help="leads: one row per reply block, not only the first reply.",
    )] = False,
    period_a: Annotated[str | None, typer.Option(
        "--a", metavar="SINCE..UNTIL",
        help="compare: the first period, e.g. 2026-10-01..2026-11-01",
    )] = None,
    period_b: Annotated[str | None, typer.Option(
        "--b", metavar="SINCE..UNTIL", help="compare: the second period, e.g. last-week.",
    )] = None,
    fail_if_over: Annotated[str | None, typer.Option(
        "--fail-if-over", metavar="DURATION",
        help="Exit 1 if the team's or any selected rep's median response exceeds this.",
    )] = None,
    fail_if_under: Annotated[float | None, typer.Option(
        "--fail-if-under", metavar="FRACTION",
        help="Exit 1 if the team's or any selected rep's within-SLA share is below this (0-1).",
    )] = None,
) -> None:
    """Print a report over the cached mail.

    Examples: `replytime report reps --since last-week`, `replytime report leads --format csv
    -o leads.csv`, `replytime report unanswered --rep "Alice Ng"`.
    """
    from replytime.api import Analysis
    from replytime.output.emit import emit_frame
    from replytime.output.render import empty_note
    from replytime.store import open_cache

    chosen = fmt.value if fmt else ("table" if sys.stdout.isatty() and not output else "csv")
    cfg = _config()
    cache = open_cache(G.db, create=False)
    _team(cfg, require=True)
    analysis = Analysis(cache, cfg, as_of=as_of)
    sel = analysis.selection(since, until, rep, team)
    analysis.limit_to(_scope(analysis, kind, sel.period, since, until, period_a, period_b))
    basis = None if business is None else ("business" if business else "calendar")
    used = analysis.basis(basis)
    label = sel.period.label(analysis.tz)
    table = chosen == "table"
    title, caption = None, None
    if kind is Kind.weekly:
        wr = _weekly(analysis, chosen, output, since, until, rep, team, basis, raw_csv)
        if output:
            _summary(f"wrote {output}")
        _check_targets(analysis, wr.selection, basis, fail_if_over, fail_if_under)
        return
    if kind is Kind.reps:
        df = analysis.reps(sel, basis=basis, include_total=table)
        title = f"Response times per rep ({used} time), leads {label}"
        caption = f"SLA target {_dur(analysis.config.sla_target_s)}; as of " + _when(analysis)
    elif kind is Kind.leads and all_replies:
        df = analysis.blocks(sel)
        title = f"Every reply block of the leads {label}"
    elif kind is Kind.leads:
        df = analysis.leads(sel)
        title = f"Leads {label}"
    elif kind is Kind.unanswered:
        df = analysis.unanswered(sel, older_than=older_than, basis=basis)
        stale = f" waiting over {older_than} ({used} time)" if older_than else ""
        title = f"Unanswered leads{stale} as of {_when(analysis)}, oldest first"
    elif kind is Kind.compare:
        if not (period_a and period_b):
            raise UsageError("compare needs both --a SINCE..UNTIL and --b SINCE..UNTIL")
        from replytime.analysis.followon import MEDIAN_TEST, SLA_TEST

        df = analysis.compare(period_a, period_b, sel, basis=basis)
        title = f"A = {period_a} vs B = {period_b} ({used} time)"
        caption = (f"median_p: {MEDIAN_TEST} on response times; sla_p: {SLA_TEST} on "
                   "within-SLA shares. p < 0.05: unlikely to be noise.")
    elif kind is Kind.volume:
        df = analysis.volume(sel)
        title = f"Volume per day ({analysis.tz}), {label}"
    elif kind is Kind.threads:
        df = analysis.threads(sel)
        title = f"Lead thread lengths, leads {label}"
    else:
        df = analysis.sla(sel, basis=basis)
        title = f"Leads per response time bucket ({used} time), {label}"
    note = empty_note(kind.value, df) if chosen in ("table", "markdown", "html") else None
    if table and kind.value in TABLE_COLUMNS:
        df = df[[c for c in TABLE_COLUMNS[kind.value] if c in df.columns]]
    emit_frame(df, chosen, output=output, tz=analysis.tz,
               title=title if chosen in ("table", "markdown", "html") else None,
               caption=caption, note=note, raw_csv=raw_csv)
    if output:
        _summary(f"wrote {output}")
    if kind is Kind.compare and table:
        for note in df.loc[df["note"].fillna("") != "", ["rep", "note"]].itertuples():
            _summary(f"note: {note.rep}: {note.note}")
    _check_targets(analysis, sel, basis, fail_if_over, fail_if_under)
    if fail_if_any and kind is Kind.unanswered and len(df):
        stale = f" older than {older_than}" if older_than else ""
        raise CheckFailed(f"{len(df)} unanswered lead(s){stale}")


def _scope(analysis: Any, kind: Kind, period: Any, since: str | None, until: str | None,
           period_a: str | None, period_b: str | None) -> Any:
    """The lead period a report needs data for (see Analysis.limit_to)."""
    from replytime.periods import Period

    if kind is Kind.weekly:
        from replytime.analysis.weekly import weekly_periods

        current, previous = weekly_periods(since, until, analysis.tz, analysis.as_of)
        return Period(previous.since_ms, current.until_ms)
    if kind is Kind.compare and period_a and period_b:
        from replytime.analysis.followon import parse_range

        try:
            a, b = (parse_range(x, analysis.tz, analysis.now) for x in (period_a, period_b))
        except ValueError:
            return Period(None, None)  # reported properly by the compare itself
        if None in (a.since_ms, a.until_ms, b.since_ms, b.until_ms):
            return Period(None, None)
        return Period(min(a.since_ms, b.since_ms), max(a.until_ms, b.until_ms))
    return period


def _weekly(analysis: Any, chosen: str, output: Path | None, since: str | None,
            until: str | None, rep: list[str] | None, team: str | None,
            basis: str | None, raw_csv: bool) -> Any:
    """`report weekly`: the weekly summary in any format; returns the WeeklyReport."""
    import io

    from rich.console import Console

    from replytime.analysis.weekly import weekly_frame, weekly_report
    from replytime.output.emit import emit_frame
    from replytime.output.render import atomic_write, write_payload
    from replytime.output.terminal import console
    from replytime.output.weekly import render_weekly_terminal

    wr = weekly_report(analysis, since, until, rep, team, basis)  # type: ignore[arg-type]
    if chosen == "table":
        if output:
            buf = io.StringIO()
            render_weekly_terminal(wr, Console(file=buf, width=100, no_color=True))
            atomic_write(output, lambda f: f.write(buf.getvalue()), binary=False)
        else:
            render_weekly_terminal(wr, console())
    elif chosen == "html":
        from replytime.output.html import render_weekly_html

        write_payload(render_weekly_html(wr), output)
    else:
        from replytime.output.render import NO_LEADS

        emit_frame(weekly_frame(wr), chosen, output=output, tz=analysis.tz,
                   title=f"Weekly summary, {wr.label()}" if chosen == "markdown" else None,
                   note=None if wr.team["leads"] else NO_LEADS, raw_csv=raw_csv)
    return wr


def _check_targets(analysis: Any, sel: Any, basis: Any, over: str | None,
                   under: float | None) -> None:
    """--fail-if-over / --fail-if-under: cron alerts on the team and each selected rep."""
    if over is None and under is None:
        return
    from replytime.periods import format_duration, parse_duration

    if under is not None and not 0 <= under <= 1:
        raise UsageError("--fail-if-under takes a fraction between 0 and 1, e.g. 0.8")
    try:
        limit = parse_duration(over) if over is not None else None
    except ValueError as exc:
        raise UsageError(f"--fail-if-over: {exc}") from None
    table = analysis.reps(sel, basis=basis, include_total=True)
    table = table[table["leads"] > 0]
    misses = []
    for row in table.itertuples():  # one row per rep: a handful
        who = "team" if row.rep == "TOTAL" else row.rep
        if limit is not None and row.median_s == row.median_s and row.median_s > limit:
            misses.append(f"{who} median {format_duration(row.median_s)} > "
                          f"{format_duration(limit)}")
        if under is not None and row.within_sla < under:
            misses.append(f"{who} within SLA {row.within_sla:.0%} < {under:.0%}")
    if misses:
        raise CheckFailed("target missed: " + "; ".join(misses))


def _dur(seconds: float) -> str:
    from replytime.periods import format_duration

    return format_duration(seconds)


def _when(analysis: Any) -> str:
    return analysis.as_of.astimezone(analysis.tz).strftime("%Y-%m-%d %H:%M %Z")


# -- send / alert ---------------------------------------------------------------------------
@send_app.command("weekly")
def send_weekly(
    since: SinceOption = None,
    until: UntilOption = None,
    as_of: AsOfOption = None,
    rep: RepOption = None,
    team: TeamOption = None,
    business: BusinessOption = None,
    to: Annotated[list[str] | None, typer.Option(
        "--to", metavar="ADDR", help="Send to this address instead of [delivery] to "
        "(repeatable).",
    )] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Write the message (.eml) to --output or stdout; send nothing.",
    )] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE.eml", help="With --dry-run: write the message here.",
    )] = None,
) -> None:
    """Mail the weekly summary (`report weekly`; default: the last full week) as a
    plain-text part, an HTML part that Gmail and Outlook render as it is (inline styles,
    charts as table bars, no images), and the CSV attached unless [delivery] attach_csv =
    false. Sent by the SMTP server of [delivery] (docs/configuration.md).

    Example: replytime send weekly --dry-run -o weekly.eml, then replytime send weekly
    """
    from replytime.analysis.weekly import weekly_report
    from replytime.api import Analysis
    from replytime.errors import ConfigError
    from replytime.output.delivery import send_mail, smtp_ready
    from replytime.output.mail import weekly_message
    from replytime.store import open_cache

    if output and not dry_run:
        raise UsageError("--output writes the message instead of sending it: add --dry-run")
    cfg = _config()
    _team(cfg, require=True)
    d = cfg.delivery
    if d is None:
        raise ConfigError("delivery", "no [delivery] section: add one (docs/configuration.md)")
    recipients = [a.strip().lower() for a in to] if to else list(d.to)
    for a in recipients:
        if "@" not in a or " " in a:
            raise UsageError(f"--to: {a!r} is not an email address")
    if not recipients:
        raise ConfigError("delivery.to", "no recipients: set it or pass --to")
    if d.sender is None:
        raise ConfigError("delivery.from", "is required (the sender address)")
    if not dry_run:
        smtp_ready(d)  # config mistakes before the report is built
    cache = open_cache(G.db, create=False)
    analysis = Analysis(cache, cfg, as_of=as_of)
    analysis.limit_to(_scope(analysis, Kind.weekly, None, since, until, None, None))
    basis = None if business is None else ("business" if business else "calendar")
    wr = weekly_report(analysis, since, until, rep, team, basis)  # type: ignore[arg-type]
    msg = weekly_message(wr, d.sender, recipients, d.subject, d.attach_csv)
    if dry_run:
        from replytime.output.render import write_payload

        write_payload(msg.as_bytes(), output)
        if output:
            _summary(f"wrote {output} (not sent)")
        return
    send_mail(d, msg, recipients, oauth_token=_mail_oauth_token(cfg))
    _summary(f"sent the weekly summary ({wr.label()}) to {', '.join(recipients)}")


def _mail_oauth_token(cfg: Any) -> str | None:
    """An access token for [delivery] oauth_account (its sync's Google token, refreshed
    when expired; or its Microsoft sign-in's, for SMTP.Send), or None without one."""
    d = cfg.delivery
    if d is None or d.oauth_account is None:
        return None
    acct = cfg.account(d.oauth_account)
    if acct.microsoft_sign_in:
        from replytime.sources.msauth import smtp_access_token

        return smtp_access_token(acct, d.username)
    from replytime.sources.imap import oauth_access_token

    token_file = os.path.expanduser(os.path.expandvars(str(acct.options["oauth_token_file"])))
    return oauth_access_token(token_file, acct.name)


class AlertFormat(StrEnum):
    table = "table"
    json = "json"


@app.command()
def alert(
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List what would be sent; send and record nothing.",
    )] = False,
    fmt: Annotated[AlertFormat, typer.Option(
        "--format", help="How --dry-run lists the leads: table or json.",
    )] = AlertFormat.table,
    as_of: AsOfOption = None,
) -> None:
    """Post open leads waiting longer than [alerts] older_than (business time by default)
    to Slack, Microsoft Teams and/or mail, once each: what was alerted is kept in the
    cache, so a rerun posts only new ones. For cron every few minutes.

    Exit 0 when everything was sent (or nothing was due), 4 when a delivery failed after
    retries; what failed is sent by the next run. Example: replytime alert --dry-run
    """
    import json

    from replytime.api import Analysis
    from replytime.output.alerts import deliver, plan
    from replytime.store import open_cache

    cfg = _config()
    cache = open_cache(G.db, create=False)
    _team(cfg, require=True)
    analysis = Analysis(cache, cfg, as_of=as_of)
    if cfg.alerts is not None:
        from replytime.periods import Period

        analysis.limit_to(Period(analysis.as_of_ms - cfg.alerts.lookback_s * 1000, None))
    if not dry_run:
        # Overlapping cron runs: the second waits for the first, then plans without what
        # it sent.
        with cache.alerts_lock():
            p = plan(analysis, cfg)
            token = _mail_oauth_token(cfg) if p.pending.get("mail") else None
            deliver(p, analysis, cfg, mail_oauth_token=token)
        sent = ", ".join(f"{c} {n}" for c, n in p.sent.items())
        _summary(f"alerted {max(p.sent.values(), default=0)} lead(s) ({sent})")
        if p.failures:
            from replytime.errors import DeliveryFailed

            raise DeliveryFailed("; ".join(p.failures))
        return
    p = plan(analysis, cfg)
    rows = p.rows()
    if fmt is AlertFormat.json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for r in rows:
        typer.echo(f"{r['lead_time'][:16]}  waiting {_dur(r['waiting_s']):>8}  "
                   f"{r['rep']}  {r['lead_from']}  -> {', '.join(r['channels'])}")
    _summary(f"{len(rows)} lead(s) would be alerted ({p.basis} time); nothing sent")


# -- entry point ----------------------------------------------------------------------------
def run() -> None:
    """The full command line, then a quick exit (``runner.finish``). The console script is
    ``entry.run``, which calls this for everything but a plain ``import``."""
    from replytime.runner import finish

    finish(main())


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors with the exit codes of docs/commands.md
    (``runner.guarded``, which also handles Ctrl-C and SIGTERM)."""
    from replytime.runner import guarded

    def call() -> Any:
        try:
            return app(args=argv, prog_name="replytime", standalone_mode=False)
        except typer.Exit as exc:
            return exc.exit_code
        except typer.Abort:
            raise KeyboardInterrupt from None

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    return guarded(call, debug=debug, echo=_summary, usage=_usage_error)


def _usage_error(exc: Exception) -> int | None:
    """Command-line parsing errors (typer's own click): one line, exit 2; `replytime` with
    no arguments prints the help. None when ``exc`` is not one of them."""
    message = getattr(exc, "format_message", None)
    code = getattr(exc, "exit_code", None)
    if message is None or not isinstance(code, int):
        return None
    if type(exc).__name__ == "NoArgsIsHelpError":
        ctx = getattr(exc, "ctx", None)
        typer.echo(ctx.get_help() if ctx is not None else message())
        return 0
    text = " ".join(str(message()).split())
    typer.echo(f"replytime: error: {text} (see --help)", err=True)
    return code



__all__ = ["CheckFailed", "app", "main", "run"]
