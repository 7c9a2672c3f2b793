"""The weekly summary as an email: a multipart/alternative message with a plain-text part
(the terminal summary without colour) and an HTML part that webmail clients render as
they are, optionally with the report's CSV attached.

Gmail and Outlook on the web drop ``<style>`` blocks in places, never load external CSS and
do not render inline SVG, and Outlook blocks images until the reader allows them. So the
HTML part has no stylesheet, no SVG and no image: every style is inline, and the charts are
tables whose cells carry the colour (``bgcolor`` and ``background``) and whose bar widths
are the numbers. It reads the same with images blocked.

Every value goes through ``html.escape``: subjects and addresses come from mail headers.
"""

from __future__ import annotations

import io
import math
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from html import escape

import pandas as pd
from rich.console import Console

from replytime.analysis.weekly import TEAM, WEEKDAYS, WeeklyReport, weekly_frame
from replytime.output.html import BLUE, FONT, GREEN, GREY, INK, RED, _mix
from replytime.output.render import machine_frame, to_csv
from replytime.output.weekly import HEADLINE, delta, format_value, render_weekly_terminal
from replytime.periods import format_duration

WIDTH = 640  # the usual safe width of an email body
BAR_MAX = 180  # px of the longest bar in the daily chart
HEAT_CELL = 16  # px per hour cell of the heatmap
_MEANING = {1: GREEN, -1: RED, 0: GREY}


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def weekly_subject(report: WeeklyReport, template: str) -> str:
    return template.format(period=report.label())


def weekly_text(report: WeeklyReport) -> str:
    """The plain-text part: what `report weekly` prints on a terminal, without colour."""
    buf = io.StringIO()
    render_weekly_terminal(report, Console(file=buf, width=100, no_color=True,
                                           color_system=None, force_terminal=False))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def weekly_csv(report: WeeklyReport) -> str:
    """The attachment: exactly what `report weekly --format csv` writes."""
    return to_csv(machine_frame(weekly_frame(report)))


# -- the HTML part -----------------------------------------------------------------------
_TD = f"padding:6px 8px;border-bottom:1px solid #e5e7eb;font-family:{FONT};font-size:13px;"
_TH = (f"padding:6px 8px;border-bottom:1px solid #d1d5db;font-family:{FONT};font-size:11px;"
       f"color:{GREY};text-transform:uppercase;letter-spacing:.05em;font-weight:600;")


def _delta_html(metric: str, row: pd.Series) -> str:
    text, meaning = delta(metric, row[metric], row[f"prev_{metric}"])
    if not text:
        return ""
    return (f'<span style="color:{_MEANING[meaning]};font-size:11px;font-weight:600;'
            f'white-space:nowrap"> {_e(text)}</span>')


def _panel(title: str, inner: str) -> str:
    return (
        f'<tr><td style="padding:16px 20px;background:#ffffff;border-radius:8px">'
        f'<h2 style="margin:0 0 10px;font-family:{FONT};font-size:15px;color:{INK}">'
        f"{_e(title)}</h2>{inner}</td></tr>"
        '<tr><td style="height:12px;line-height:12px;font-size:1px">&nbsp;</td></tr>'
    )


def _headline(report: WeeklyReport) -> str:
    team = report.table.iloc[-1]
    cells = []
    for label, metric in HEADLINE:
        cells.append(
            f'<td align="center" style="padding:8px 4px;font-family:{FONT}">'
            f'<div style="font-size:10px;color:{GREY};text-transform:uppercase;'
            f'letter-spacing:.06em">{_e(label)}</div>'
            f'<div style="font-size:20px;font-weight:700;color:{INK};white-space:nowrap">'
            f"{_e(format_value(metric, team[metric]))}</div>"
            f"<div>{_delta_html(metric, team)}</div></td>"
        )
    return (f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
            f'style="border-collapse:collapse"><tr>{"".join(cells)}</tr></table>')


_REP_COLUMNS = [("leads", "leads"), ("replied", "reply_rate"), ("median", "median_s"),
                ("p90", "p90_s"), ("in SLA", "within_sla"), ("open", "unanswered")]


def _reps(report: WeeklyReport) -> str:
    head = f'<th align="left" style="{_TH}">rep</th>' + "".join(
        f'<th align="right" style="{_TH}">{_e(label)}</th>' for label, _ in _REP_COLUMNS)
    rows = []
    for _, row in report.table.iterrows():  # one row per rep: a handful
        bold = "font-weight:700;border-top:2px solid #d1d5db;" if row["rep"] == TEAM else ""
        cells = [f'<td style="{_TD}{bold}">{_e(row["rep"])}</td>']
        for _, metric in _REP_COLUMNS:
            cells.append(f'<td align="right" style="{_TD}{bold}white-space:nowrap">'
                         f"{_e(format_value(metric, row[metric]))}{_delta_html(metric, row)}"
                         "</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
            f'style="border-collapse:collapse"><tr>{head}</tr>{"".join(rows)}</table>'
            f'<p style="margin:8px 0 0;font-family:{FONT};font-size:11px;color:{GREY}">'
            f"Change against the previous period: green better, red worse. Durations in "
            f"{_e(report.basis)} time.</p>")


def _bar(value: int, top: int, colour: str, name: str) -> str:
    """A bar as a table cell of that width: what every mail client draws."""
    width = round(value / top * BAR_MAX) if top else 0
    if width == 0:
        return ""
    return (f'<table role="presentation" cellpadding="0" cellspacing="0" '
            f'style="border-collapse:collapse"><tr><td class="bar" data-bar="{name}" '
            f'data-value="{value}" width="{width}" height="10" bgcolor="{colour}" '
            f'style="width:{width}px;height:10px;background:{colour};font-size:1px;'
            f'line-height:1px">&nbsp;</td></tr></table>')


def _daily(report: WeeklyReport) -> str:
    d = report.daily
    top = max(int(d[["leads", "first_replies"]].to_numpy().max(initial=0)), 1)
    rows = []
    for r in d.itertuples(index=False):
        rows.append(
            f'<tr><td style="{_TD}white-space:nowrap">{r.date:%a %d %b}</td>'
            f'<td align="right" style="{_TD}">{int(r.leads)}</td>'
            f'<td style="{_TD}">{_bar(int(r.leads), top, BLUE, "leads")}</td>'
            f'<td align="right" style="{_TD}">{int(r.first_replies)}</td>'
            f'<td style="{_TD}">{_bar(int(r.first_replies), top, GREEN, "replies")}</td></tr>'
        )
    head = (f'<tr><th align="left" style="{_TH}">day</th><th align="right" style="{_TH}">'
            f'leads</th><th style="{_TH}"></th><th align="right" style="{_TH}">first replies'
            f'</th><th style="{_TH}"></th></tr>')
    return (f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
            f'style="border-collapse:collapse">{head}{"".join(rows)}</table>')


def _heatmap(report: WeeklyReport) -> str:
    counts = report.heatmap.to_numpy()
    peak = max(int(counts.max(initial=0)), 1)
    small = f"font-family:{FONT};font-size:9px;color:{GREY};padding:0;"
    hours = "".join(
        f'<td align="center" width="{HEAT_CELL}" style="{small}width:{HEAT_CELL}px">'
        f'{h:02d}</td>' if h % 3 == 0 else f'<td width="{HEAT_CELL}" style="{small}"></td>'
        for h in range(24))
    rows = [f'<tr><td style="{small}"></td>{hours}<td style="{small}"></td></tr>']
    for d, name in enumerate(WEEKDAYS):
        cells = []
        for hour in range(24):
            c = int(counts[d, hour])
            # sqrt so that one busy hour does not wash out the rest (as the HTML report)
            fill = "#f3f4f6" if c == 0 else _mix("#dbeafe", "#1e3a8a", math.sqrt(c / peak))
            cells.append(f'<td class="heat" data-count="{c}" width="{HEAT_CELL - 2}" '
                         f'height="{HEAT_CELL - 2}" bgcolor="{fill}" title="{name} {hour:02d}:00'
                         f' {c}" style="width:{HEAT_CELL - 2}px;height:{HEAT_CELL - 2}px;'
                         f'background:{fill};border:1px solid #ffffff;font-size:1px">&nbsp;</td>')
        rows.append(f'<tr><td style="{small}font-size:11px;color:{INK};padding-right:6px">'
                    f"{name}</td>{''.join(cells)}<td style=\"{small}font-size:11px;"
                    f'padding-left:6px">{int(counts[d].sum())}</td></tr>')
    return (f'<table role="presentation" cellpadding="0" cellspacing="0" '
            f'style="border-collapse:collapse">{"".join(rows)}</table>'
            f'<p style="margin:8px 0 0;font-family:{FONT};font-size:11px;color:{GREY}">'
            f"Darker: more leads (busiest hour: {peak}). Times in {_e(report.tz)}.</p>")


def _unanswered(report: WeeklyReport) -> str:
    u = report.oldest_unanswered
    if u.empty:
        return (f'<p style="margin:0;font-family:{FONT};font-size:13px;color:{GREEN}">'
                "No unanswered leads from this period.</p>")
    head = "".join(f'<th align="{a}" style="{_TH}">{t}</th>' for t, a in (
        ("received", "left"), ("waiting", "right"), ("rep", "left"), ("from", "left"),
        ("subject", "left")))
    rows = []
    for r in u.itertuples(index=False):
        when = datetime.fromtimestamp(r.lead_time_ms / 1000, report.tz)
        subject = "" if r.subject is None or r.subject != r.subject else r.subject
        rows.append(
            f'<tr><td style="{_TD}white-space:nowrap">{when:%a %d %b %H:%M}</td>'
            f'<td align="right" style="{_TD}white-space:nowrap">'
            f"{_e(format_duration(r.waiting_s))}</td><td style=\"{_TD}\">{_e(r.rep)}</td>"
            f'<td style="{_TD}">{_e(r.lead_from)}</td><td style="{_TD}">{_e(subject)}</td></tr>'
        )
    return (f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
            f'style="border-collapse:collapse"><tr>{head}</tr>{"".join(rows)}</table>')


def _unanswered_title(report: WeeklyReport) -> str:
    n = report.unanswered_total
    shown = len(report.oldest_unanswered)
    return "Oldest unanswered leads" + (f" ({shown} of {n})" if n > shown else "")


def weekly_html(report: WeeklyReport) -> str:
    """The HTML part: a single 640 px column of tables, every style inline."""
    as_of = datetime.fromtimestamp(report.as_of_ms / 1000, report.tz)
    sub = (f"{report.label()} · compared with {report.label(report.previous)} · "
           f"{report.basis} time · SLA target {format_duration(report.sla_target_s)} · "
           f"as of {as_of:%a %d %b %Y %H:%M} ({report.tz})")
    panels = [
        _panel("Team", _headline(report)),
        _panel("Per rep", _reps(report)),
        _panel(f"Leads and first replies per day ({report.tz})", _daily(report)),
        _panel("When leads arrive (hour by weekday)", _heatmap(report)),
        _panel(_unanswered_title(report), _unanswered(report)),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>Weekly lead response</title></head>"
        f'<body style="margin:0;padding:0;background:#f3f4f6">'
        f'<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
        f'bgcolor="#f3f4f6" style="background:#f3f4f6"><tr><td align="center" '
        f'style="padding:20px 8px">'
        f'<table role="presentation" width="{WIDTH}" cellpadding="0" cellspacing="0" '
        f'style="width:{WIDTH}px;max-width:100%;border-collapse:separate">'
        f'<tr><td style="padding:0 4px 14px;font-family:{FONT};color:{INK}">'
        f'<h1 style="margin:0 0 4px;font-size:22px">Weekly lead response</h1>'
        f'<p style="margin:0;font-size:12px;color:{GREY}">{_e(sub)}</p></td></tr>'
        + "".join(panels)
        + f'<tr><td align="center" style="font-family:{FONT};font-size:11px;color:{GREY};'
        'padding:4px">Sent by replytime</td></tr></table></td></tr></table></body></html>\n'
    )


# -- the message ---------------------------------------------------------------------------
def new_message(sender: str, to: list[str] | tuple[str, ...], subject: str) -> EmailMessage:
    """Headers every replytime mail carries. ``Auto-Submitted`` (RFC 3834) keeps it from
    counting as a lead or a reply should the mailbox it lands in be synced too
    (docs/definitions.md, "Automated message")."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now().astimezone())
    msg["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1])
    msg["Auto-Submitted"] = "auto-generated"
    return msg


def weekly_message(report: WeeklyReport, sender: str, to: list[str] | tuple[str, ...],
                   subject: str, attach_csv: bool) -> EmailMessage:
    """multipart/alternative (text, then HTML: clients show the last one they can), inside
    multipart/mixed with the CSV when attached."""
    msg = new_message(sender, to, weekly_subject(report, subject))
    # quoted-printable: the raw message (a --dry-run .eml) stays readable
    msg.set_content(weekly_text(report), cte="quoted-printable")
    msg.add_alternative(weekly_html(report), subtype="html", cte="quoted-printable")
    if attach_csv:
        start = datetime.fromtimestamp((report.period.since_ms or 0) / 1000, report.tz)
        msg.add_attachment(weekly_csv(report), subtype="csv",
                           filename=f"replytime-weekly-{start:%Y-%m-%d}.csv")
    return msg


__all__ = ["new_message", "weekly_csv", "weekly_html", "weekly_message", "weekly_text"]
