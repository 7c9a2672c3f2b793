"""``replytime explain`` for people: the thread as a timeline, then the verdict."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from replytime.analysis.explain import Explanation
from replytime.periods import format_duration


def render_explanation(e: Explanation, console: Console) -> None:
    console.print(f"thread {e.thread_id}: {len(e.messages)} message(s), grouped by "
                  f"{e.rule_detail[0]}")
    for line in e.rule_detail[1:]:
        console.print(f"  {line}")
    t = Table("time", "from", "who", "message id", "role / why", header_style="bold",
              show_lines=False)
    for m in e.messages:
        why = m.note if not m.role else f"{m.role.upper()}: {m.note}"
        sources = f" [{', '.join(m.sources)}]" if m.sources else ""
        t.add_row(m.time or "(no time)", m.from_ or "", m.who, (m.message_id or "") + sources,
                  why)
    console.print(t)
    console.print(("LEAD" if e.lead else "NOT A LEAD") + (f" ({e.kind})" if e.kind else ""))
    for r in e.reasons:
        console.print(f"  - {r}")
    if not e.lead:
        return
    console.print(f"  lead {e.lead_message_id} at {e.lead_time}; rep {e.rep}"
                  + (f" (addressed to {e.addressed_rep})" if e.addressed_rep else ""))
    if e.first_reply is None:
        console.print(f"  no first reply as of {e.as_of}")
        return
    where = (f" in thread {e.reply_thread_id}" if e.reply_thread_id
             and e.reply_thread_id != e.thread_id else "")
    console.print(f"  first reply {e.first_reply}{where} at {e.reply_time} by {e.responder}")
    console.print(f"  response {format_duration(e.response_s or 0)} ({e.response_s} s) calendar, "
                  f"{format_duration(e.business_s or 0)} ({e.business_s} s) business"
                  + (f" on schedule {e.schedule!r}" if e.schedule else " (no schedule: "
                     "business time = calendar time)"))
    for a, b in e.business_intervals:
        console.print(f"    working time counted: {a} to {b}")
