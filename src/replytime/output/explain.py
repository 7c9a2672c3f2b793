"""``replytime explain`` for people: the thread as a timeline, then the verdict. Plain lines
rather than a table, so message ids and addresses are never cut, and no rich markup: mail
headers and config keys hold square brackets."""

from __future__ import annotations

from rich.console import Console

from replytime.analysis.explain import Explanation
from replytime.periods import format_duration


def explanation_lines(e: Explanation) -> list[str]:
    out = [f"thread {e.thread_id}: {len(e.messages)} message(s), grouped by {e.rule_detail[0]}"]
    out += [f"  {line}" for line in e.rule_detail[1:]]
    out.append("")
    for m in e.messages:
        kind = m.who + (f", automated: {m.marker}" if m.automated else "")
        out.append(f"{m.time or '(no usable time)'}  {m.from_ or '(no sender)'} ({kind})")
        out.append(f"    {m.message_id or '(no Message-ID)'}"
                   + (f"  from {', '.join(m.sources)}" if m.sources else ""))
        out.append("    " + (f"{m.role.upper()}: " if m.role else "") + m.note)
    out.append("")
    out.append(("LEAD" if e.lead else "NOT A LEAD") + (f" ({e.kind})" if e.kind else ""))
    out += [f"  - {r}" for r in e.reasons]
    if not e.lead:
        return out
    out.append(f"  lead {e.lead_message_id} at {e.lead_time}; belongs to {e.rep}"
               + (f" (addressed to {e.addressed_rep})" if e.addressed_rep else ""))
    if e.first_reply is None:
        out.append(f"  no first reply as of {e.as_of}")
        return out
    where = (f" in thread {e.reply_thread_id}" if e.reply_thread_id
             and e.reply_thread_id != e.thread_id else "")
    out.append(f"  first reply {e.first_reply}{where} at {e.reply_time} by {e.responder}")
    schedule = (f"on schedule {e.schedule!r}" if e.schedule
                else "(no schedule: business time is calendar time)")
    out.append(f"  response {format_duration(e.response_s or 0)} ({e.response_s} s) calendar, "
               f"{format_duration(e.business_s or 0)} ({e.business_s} s) business {schedule}")
    out += [f"    working time counted: {a} to {b}" for a, b in e.business_intervals]
    if e.schedule and not e.business_intervals:
        out.append("    no working time between the lead and the reply")
    return out


def render_explanation(e: Explanation, console: Console) -> None:
    for line in explanation_lines(e):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
