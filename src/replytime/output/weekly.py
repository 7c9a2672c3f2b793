"""The weekly summary for people: how its numbers read (``87%``, ``1h 05m``, ``▲5pp``) and
the terminal rendering. The report itself is built in ``replytime.analysis.weekly``; the
HTML page is ``replytime.output.html``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from replytime.analysis.weekly import TEAM, WEEKDAYS, WeeklyReport
from replytime.output.render import NO_LEADS
from replytime.periods import format_duration

if TYPE_CHECKING:
    from rich.console import RenderableType

# The team headline (terminal and HTML cards): label, metric.
HEADLINE = [("Leads", "leads"), ("Reply rate", "reply_rate"), ("Median", "median_s"),
            ("p90", "p90_s"), ("Within SLA", "within_sla"), ("Unanswered", "unanswered")]
# metric -> +1 when a higher value is better, -1 when lower is better, 0 when neither.
DIRECTION = {"leads": 0, "reply_rate": 1, "median_s": -1, "p90_s": -1, "within_sla": 1,
             "unanswered": -1}


def short_duration(seconds: float) -> str:
    """One significant unit for change columns: ``45s``, ``12m``, ``2.5h``, ``3.2d``."""
    s = abs(seconds)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    unit, size = ("h", 3600) if s < 86400 else ("d", 86400)
    value = s / size
    # Tenths only while they matter: 1.5h, but 14h rather than 14.2h.
    text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return text.removesuffix(".0") + unit


def delta(metric: str, cur: float, prev: float) -> tuple[str, int]:
    """Change against the previous period as text (``▲5pp``, ``▼12m``, ``▲3``) and its
    meaning: +1 better, -1 worse, 0 neutral (no change, no comparison, or leads)."""
    if is_missing(cur) or is_missing(prev):
        return ("new" if is_missing(prev) and not is_missing(cur) else ""), 0
    change = float(cur) - float(prev)
    if metric in ("reply_rate", "within_sla"):
        change = round(change * 100)  # percentage points
        text = f"{abs(change):.0f}pp"
    elif metric.endswith("_s"):
        text = short_duration(change)
    else:
        text = f"{abs(change):.0f}"
    if change == 0 or text in ("0", "0s", "0pp"):
        return "=", 0
    arrow = "▲" if change > 0 else "▼"
    return arrow + text, int(np.sign(change)) * DIRECTION[metric]


def is_missing(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def format_value(metric: str, v: object, missing: str = "-") -> str:
    """A weekly metric for people: ``87%``, ``1h 05m``, ``1,204``."""
    if is_missing(v):
        return missing
    if metric in ("reply_rate", "within_sla", "lead_share"):
        return f"{float(v) * 100:.0f}%"  # type: ignore[arg-type]
    if metric.endswith("_s"):
        return format_duration(float(v))  # type: ignore[arg-type]
    return f"{int(v):,}"  # type: ignore[call-overload]


_STYLE = {1: "green", -1: "red", 0: "dim"}


def _cell(row: pd.Series, metric: str) -> Text:
    text = Text(format_value(metric, row[metric]))
    change, meaning = delta(metric, row[metric], row[f"prev_{metric}"])
    if change:
        text.append(" ")
        text.append(change, style=_STYLE[meaning])
    return text


def render_weekly_terminal(report: WeeklyReport, console: Console) -> None:
    """Print the weekly summary: team headline, per-rep table with changes, oldest
    unanswered leads, leads and replies per day, and when leads arrive. Arrows carry the
    direction and colour only repeats it, so it reads the same without colour."""
    console.print(_render_terminal(report))


def _render_terminal(report: WeeklyReport) -> RenderableType:
    team = report.table.iloc[-1]
    head = Text()
    head.append("Weekly lead response", style="bold")
    head.append(f"  {report.label()}  ({report.tz})\n")
    head.append(
        f"vs {report.label(report.previous)} · {report.basis} time · SLA target "
        f"{format_duration(report.sla_target_s)} · as of "
        f"{datetime.fromtimestamp(report.as_of_ms / 1000, report.tz):%a %Y-%m-%d %H:%M}",
        style="dim",
    )
    # Team headline as a row of small "cards": label above, value and change below.
    kpis = Table.grid(padding=(0, 3))
    cards = HEADLINE
    for _ in cards:
        kpis.add_column(no_wrap=True)
    kpis.add_row(*[Text(label, style="dim") for label, _ in cards])
    values = []
    for _, metric in cards:
        cell = _cell(team, metric)
        cell.stylize("bold", 0, len(format_value(metric, team[metric])))
        values.append(cell)
    kpis.add_row(*values)
    empty = [] if team["leads"] else [Text(NO_LEADS, style="dim"), Text()]
    return Group(head, Text(), kpis, Text(), *empty, _reps_table(report), *_unanswered_part(report),
                 *_handoffs_part(report), _daily_table(report), _heatmap_text(report))


def _handoffs_part(report: WeeklyReport) -> list[RenderableType]:
    if report.handoffs.empty:
        return []
    t = Table(title="Who covered for whom", title_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False, header_style="bold")
    t.add_column("addressed to")
    t.add_column("answered by")
    t.add_column("leads", justify="right")
    for r in report.handoffs.itertuples():
        t.add_row(str(r.addressed_rep), str(r.responder), str(r.leads))
    return [t]


def _reps_table(report: WeeklyReport) -> Table:
    t = Table(title="Per rep, change vs previous period", title_justify="left",
              title_style="bold", header_style="bold", box=box.SIMPLE_HEAD, show_edge=False,
              padding=(0, 1, 0, 0))
    t.add_column("rep", overflow="ellipsis", max_width=22, no_wrap=True)
    show_team = report.table["team"].notna().any()
    if show_team:
        t.add_column("team", overflow="ellipsis", max_width=10, no_wrap=True)
    columns = [("leads", "leads"), ("share", "lead_share"), ("replied", "reply_rate"),
               ("median", "median_s"), ("p90", "p90_s"), ("in SLA", "within_sla"),
               ("unanswered", "unanswered")]
    for label, _ in columns:
        t.add_column(label, justify="right", no_wrap=True)
    for _, row in report.table.iterrows():  # one row per rep: a handful
        is_team = row["rep"] == TEAM
        if is_team:
            t.add_section()
        cells: list[Text | str] = [str(row["rep"])]
        if show_team:
            cells.append("" if is_missing(row["team"]) else str(row["team"]))
        for _, metric in columns:
            cells.append(Text(format_value(metric, row[metric])) if metric == "lead_share"
                         else _cell(row, metric))
        t.add_row(*cells, style="bold" if is_team else None)
    return t


def _unanswered_part(report: WeeklyReport) -> list[RenderableType]:
    u = report.oldest_unanswered
    if u.empty:
        return [Text("\nNo unanswered leads from this period.", style="green"), Text()]
    more = report.unanswered_total - len(u)
    title = "Oldest unanswered leads" + (f" (10 of {report.unanswered_total})" if more else "")
    t = Table(title=title, title_justify="left", title_style="bold", header_style="bold",
              box=box.SIMPLE_HEAD, show_edge=False,
              padding=(0, 1, 0, 0))
    t.add_column("received", no_wrap=True)
    t.add_column("waiting", justify="right", no_wrap=True)
    t.add_column("rep", overflow="ellipsis", max_width=18, no_wrap=True)
    t.add_column("from", overflow="ellipsis", max_width=28, no_wrap=True)
    t.add_column("subject", overflow="ellipsis", no_wrap=True, ratio=1)
    for r in u.itertuples(index=False):
        when = datetime.fromtimestamp(r.lead_time_ms / 1000, report.tz)
        t.add_row(f"{when:%a %d %b %H:%M}", format_duration(r.waiting_s), str(r.rep),
                  Text(str(r.lead_from)), Text("" if is_missing(r.subject) else str(r.subject)))
    return [Text(), t, Text()]


def _daily_table(report: WeeklyReport) -> Table:
    d = report.daily
    t = Table(title="Leads and first replies per day", title_justify="left",
              title_style="bold", header_style="bold", box=box.SIMPLE_HEAD, show_edge=False,
              padding=(0, 1, 0, 0))
    t.add_column("day", no_wrap=True)
    t.add_column("leads", justify="right")
    t.add_column("", no_wrap=True, min_width=_BAR)
    t.add_column("replies", justify="right")
    t.add_column("", no_wrap=True, min_width=_BAR)
    # Both bars on one scale, so a day's leads and replies compare at a glance.
    top = max(int(d[["leads", "first_replies"]].to_numpy().max(initial=0)), 1)
    for r in d.itertuples(index=False):
        t.add_row(f"{r.date:%a %d %b}", str(r.leads),
                  Text("█" * round(r.leads / top * _BAR), style="blue"),
                  str(r.first_replies),
                  Text("█" * round(r.first_replies / top * _BAR), style="green"))
    return t


_BAR = 24
_SHADES = " ░▒▓█"


def _heatmap_text(report: WeeklyReport) -> Text:
    h = report.heatmap.to_numpy()
    top = max(int(h.max(initial=0)), 1)
    # 0 stays blank; any lead shows at least the lightest shade.
    level = np.where(h > 0, np.ceil(h / top * (len(_SHADES) - 1)), 0).astype(int)
    out = Text(f"\nLeads by hour of day ({report.tz}), darkest = {top}\n", style="bold")
    out.append("     " + "".join(f"{x:<6}" for x in range(0, 24, 6)) + "\n", style="dim")
    for name, row in zip(WEEKDAYS, level, strict=True):
        out.append(f"{name}  ")
        out.append("".join(_SHADES[v] for v in row), style="blue")
        out.append(f"  {int(h[WEEKDAYS.index(name)].sum())}\n", style="dim")
    return out


