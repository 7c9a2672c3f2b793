"""Why a number is what it is: one thread laid out with every rule that decided its lead,
first reply and response times (``replytime explain``).

Nothing is decided here a second time: the lead and its first reply are those the reports
find (``LeadSet.all_leads`` over the thread's span, so form leads and their replies in other
threads are included), and business time is ``hours.business_seconds`` over the same
schedule. What this module adds is the *why*: each rule of docs/definitions.md checked on
each message of the thread, in words.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from replytime.analysis.hours import working_intervals
from replytime.analysis.leadset import LeadSet
from replytime.analysis.matcher import Roster, any_listed, prepare, recipients
from replytime.analysis.rethread import refresh_threads
from replytime.config import Config
from replytime.errors import UsageError
from replytime.model import AUTOMATED_MARKERS
from replytime.periods import Period, zone
from replytime.store import Cache

RULE_WORDS = {
    "provider": "the provider's thread id (Gmail threadId / X-GM-THRID)",
    "headers": "Message-ID, In-Reply-To and References",
    "subject": "the subject rule (same normalised subject, a shared person, within 14 days)",
    "single": "a single message: nothing joined it to another",
}


@dataclass
class ExplainedMessage:
    message_id: str | None
    time: str | None  # ISO 8601 in the report zone
    from_: str | None
    to: list[str]
    cc: list[str]
    subject: str | None
    internal: bool
    who: str  # "rep NAME", "shared inbox", "internal address", "external", "no sender"
    automated: bool
    marker: str | None  # which automated marker, when automated
    sources: list[str]  # account:location of every place it was imported from
    role: str  # "lead", "first reply", or "" for the others
    note: str  # why it is (not) the lead / a reply


@dataclass
class Explanation:
    asked: str
    thread_id: str
    rule: str
    rule_detail: list[str]
    lead: bool
    kind: str | None  # "email" or "form" when a lead
    reasons: list[str]
    lead_message_id: str | None
    lead_time: str | None
    first_reply: str | None
    reply_time: str | None
    reply_thread_id: str | None
    rep: str | None
    responder: str | None
    addressed_rep: str | None
    response_s: int | None
    business_s: int | None
    schedule: str | None
    business_intervals: list[list[str]]
    in_period: bool | None
    as_of: str
    messages: list[ExplainedMessage] = field(default_factory=list)
    other_leads: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for m in out["messages"]:
            m["from"] = m.pop("from_")
        return out


def _iso(ms: float | None, tz: Any) -> str | None:
    if ms is None or pd.isna(ms):
        return None
    return datetime.fromtimestamp(float(ms) / 1000, UTC).astimezone(tz).isoformat()


def _split(value: object) -> list[str]:
    return [a for a in str(value or "").split(",") if a]


def explain(cache: Cache, config: Config, message_id: str, *, as_of: datetime | str | None = None,
            since: str | None = None, until: str | None = None) -> Explanation:
    """The thread of ``message_id`` (any of its messages) with every rule that decided its
    numbers as of ``as_of``; ``since``/``until`` (as the reports take them) add whether its
    lead falls in that period."""
    refresh_threads(cache, config)
    wanted = message_id.strip().strip("<>")
    found = cache.find_message(wanted)
    if found is None:
        raise UsageError(f"explain: no message with Message-ID {wanted!r} in the cache")
    thread_id = found[1]
    if thread_id is None:  # only while another process writes: refresh_threads ran above
        raise UsageError(f"explain: message {wanted!r} has no thread yet; run it again")
    roster = Roster(config)
    raw = cache.thread_messages(thread_id)
    m = prepare(raw.assign(automated=raw["automated"] != 0), roster)
    m["marker"] = raw["automated"].to_numpy()
    m = m.sort_values(["time_ms", "id"], na_position="last").reset_index(drop=True)

    # The leads the reports find, over this thread's span (and a reply window before it, so
    # that a form lead answered in this thread is found too).
    probe = LeadSet(cache, config, as_of=as_of)
    period = probe.selection(since, until).period if since or until else None
    tz = probe.tz
    times = m["time_ms"].dropna()
    leads = pd.DataFrame()
    if len(times):
        back = max((r.reply_window_s for r in config.leads.forms), default=0) * 1000
        scope = Period(int(times.min()) - back, int(times.max()) + 1)
        ls = LeadSet(cache, config, as_of=probe.as_of, scope=scope)
        every = ls.all_leads
        ids = set(m["id"])
        leads = every[(every["thread_id"] == thread_id) | every["lead_id"].isin(ids)
                      | every["reply_id"].isin(ids)].reset_index(drop=True)
    as_of_ms = probe.as_of_ms

    rule = cache.thread_rules([thread_id]).get(thread_id) or "single"
    detail_words = [RULE_WORDS.get(rule, rule)] + [
        f"the messages from {joined} on joined the thread of {to} (same subject) through "
        f"{address}, who wrote or was written to in both"
        for _, joined, to, address in cache.thread_links(thread_id)
    ]

    mine = leads[leads["thread_id"] == thread_id] if not leads.empty else leads
    lead = mine.iloc[0] if len(mine) else (leads.iloc[0] if len(leads) else None)
    reasons = (_lead_reasons(m, lead, config) if lead is not None
               else _no_lead_reasons(m, config, as_of_ms))
    notes = _message_notes(m, lead, as_of_ms)
    locations = cache.thread_locations(thread_id)

    explained = [
        ExplainedMessage(
            message_id=r.message_id, time=_iso(r.time_ms, tz), from_=r.from_addr,
            to=_split(r.to_addrs), cc=_split(r.cc_addrs), subject=r.subject,
            internal=bool(r.from_internal), who=_who(r.from_addr, bool(r.from_internal), config),
            automated=bool(r.marker), marker=AUTOMATED_MARKERS.get(int(r.marker)),
            sources=locations.get(int(r.id), []), role=notes[int(r.id)][0],
            note=notes[int(r.id)][1],
        )
        for r in m.itertuples(index=False)  # one thread: a handful of rows
    ]
    out = Explanation(
        asked=wanted, thread_id=thread_id, rule=rule, rule_detail=detail_words,
        lead=lead is not None, kind=None, reasons=reasons, lead_message_id=None,
        lead_time=None, first_reply=None, reply_time=None, reply_thread_id=None, rep=None,
        responder=None, addressed_rep=None, response_s=None, business_s=None, schedule=None,
        business_intervals=[], in_period=None, as_of=_iso(as_of_ms, tz) or "",
        messages=explained,
    )
    if lead is not None:
        _fill_lead(out, lead, cache, config, tz, period)
        out.other_leads = [
            {"lead_message_id": x.lead_message_id, "kind": x.kind, "thread_id": x.thread_id}
            for x in leads.itertuples(index=False) if x.lead_id != lead["lead_id"]
        ]
    return out


def _who(address: str | None, internal: bool, config: Config) -> str:
    if not address:
        return "no sender"
    rep = config.rep_by_address().get(address.lower())
    if rep:
        return f"rep {rep}"
    if address.lower() in config.shared_inboxes:
        return "shared inbox"
    return "internal address" if internal else "external"


def _fill_lead(out: Explanation, lead: pd.Series, cache: Cache, config: Config, tz: Any,
               period: Period | None) -> None:
    out.kind = str(lead["kind"])
    out.lead_message_id = lead["lead_message_id"]
    out.lead_time = _iso(lead["lead_time_ms"], tz)
    out.rep = lead["rep"]
    out.addressed_rep = None if pd.isna(lead["addressed_rep"]) else lead["addressed_rep"]
    if period is not None:
        t = int(lead["lead_time_ms"])
        out.in_period = ((period.since_ms is None or t >= period.since_ms)
                         and (period.until_ms is None or t < period.until_ms))
        if not out.in_period:
            out.reasons.append("its lead time is outside the period asked for "
                               "(--since/--until), so that report leaves it out")
    if not bool(lead["answered"]):
        return
    out.first_reply = lead["reply_message_id"]
    out.reply_time = _iso(lead["reply_time_ms"], tz)
    out.responder = lead["responder"]
    reply = cache.find_message(str(lead["reply_message_id"]))
    out.reply_thread_id = reply[1] if reply else None
    out.response_s = int(round(float(lead["response_s"])))
    schedule = config.schedule_for(lead["responder"])
    start, end = int(lead["lead_time_ms"]), int(lead["reply_time_ms"])
    if schedule is None:  # business time is calendar time
        out.business_s = out.response_s
        return
    out.schedule = schedule.name
    out.business_s = int(round(float(lead["business_s"])))
    days = (datetime.fromtimestamp(start / 1000, UTC).date(),
            datetime.fromtimestamp(max(end, start) / 1000, UTC).date())
    zone_of = zone(schedule.timezone)
    # A day either side: the schedule's local days around a span given in UTC.
    lo, hi = working_intervals(schedule, days[0] - timedelta(days=1), days[1] + timedelta(days=1))
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        a, b = max(a, start), min(b, end)
        if a < b:
            out.business_intervals.append([_iso(a, zone_of) or "", _iso(b, zone_of) or ""])


def _earliest_human(m: pd.DataFrame) -> pd.Series | None:
    human = m[m["timed"] & ~m["automated"]]
    return human.iloc[0] if len(human) else None


def _lead_reasons(m: pd.DataFrame, lead: pd.Series, config: Config) -> list[str]:
    if lead["kind"] == "form":
        reasons = [f"a form lead: the notification {lead['lead_message_id']} matches a "
                   f"[[leads.forms]] rule; the lead address {lead['lead_from']} comes from it"]
        if lead["thread_id"] != m["thread_id"].iloc[0]:
            reasons.append(f"the notification is in thread {lead['thread_id']}; this thread "
                           "holds its first reply (form leads are answered in any thread)")
        return reasons
    reasons = [f"the earliest non-automated message ({lead['lead_message_id']}) is from "
               f"{lead['lead_from']}, an external address"]
    earlier = m[m["automated"] & (m["time_ms"] < lead["lead_time_ms"])]
    if len(earlier):
        reasons.append(f"{len(earlier)} earlier automated message(s) do not start a lead")
    f = config.leads
    if f.to:
        reasons.append("addressed to one of [leads].to: " + ", ".join(f.to))
    if f.exclude_from:
        reasons.append("sender not excluded by [leads].exclude_from")
    if f.labels:
        reasons.append("carries one of [leads].labels: " + ", ".join(f.labels))
    if not bool(lead["answered"]):
        reasons.append("unanswered as of the as-of time: no message from an internal address "
                       "with an external recipient at or after the lead")
    return reasons


def _no_lead_reasons(m: pd.DataFrame, config: Config, as_of_ms: int) -> list[str]:
    first = _earliest_human(m)
    if first is None:
        if m["automated"].all():
            return ["not a lead: every message of the thread is automated, and automated "
                    "mail never starts a lead"]
        return ["not a lead: no non-automated message has a usable time"]
    if first["time_ms"] > as_of_ms:
        return ["not a lead yet: its earliest non-automated message is after the as-of time"]
    if first["from_addr"] is None:
        return ["not a lead: the earliest non-automated message has no sender address"]
    if first["from_internal"]:
        external = (~m["from_internal"] & m["from_addr"].notna()).any() or m["to_external"].any()
        if not external:
            return ["internal: every participant of the thread is internal"]
        return [f"outbound: the earliest non-automated message is from {first['from_addr']}, "
                "an internal address; threads started by the team are not leads"]
    reasons = [f"the earliest non-automated message is from {first['from_addr']}, an external "
               "address, but the lead filters leave it out:"]
    f = config.leads
    row = m[m["id"] == first["id"]]
    if f.to and not bool(any_listed(recipients(row), f.to).iloc[0]):
        reasons.append("not addressed (To/Cc) to any of [leads].to: " + ", ".join(f.to))
    hit = [g for g in f.exclude_from if fnmatch.fnmatchcase(first["from_addr"], g)]
    if hit:
        reasons.append("sender excluded by [leads].exclude_from: " + ", ".join(hit))
    if f.labels:
        reasons.append("carries none of [leads].labels: " + ", ".join(f.labels))
    if len(reasons) == 1:  # no filter explains it: say what is known
        reasons.append("the message is a form rule's notification, counted as a form lead "
                       "elsewhere")
    return reasons


def _message_notes(m: pd.DataFrame, lead: pd.Series | None,
                   as_of_ms: int) -> dict[int, tuple[str, str]]:
    """Per message: (role, why it is or is not the lead or the first reply)."""
    notes: dict[int, tuple[str, str]] = {}
    lead_id = None if lead is None else int(lead["lead_id"])
    reply_id = None if lead is None or pd.isna(lead["reply_id"]) else int(lead["reply_id"])
    lead_ms = None if lead is None else int(lead["lead_time_ms"])
    reply_ms = None if reply_id is None else int(lead["reply_time_ms"])
    for r in m.itertuples(index=False):
        i = int(r.id)
        if i == lead_id:
            notes[i] = ("lead", "the lead message: the clock starts here")
        elif i == reply_id:
            notes[i] = ("first reply", "the first reply: the clock stops here")
        elif not r.timed:
            notes[i] = ("", "no usable time: left out of every time-based number")
        elif r.marker:
            notes[i] = ("", "automated (" + AUTOMATED_MARKERS.get(int(r.marker), "?")
                        + "): never a lead nor a reply")
        elif r.time_ms > as_of_ms:
            notes[i] = ("", "after the as-of time")
        elif not r.from_internal:
            notes[i] = ("", "from outside: part of the lead's conversation"
                        if lead_ms is not None and r.time_ms >= lead_ms else "from outside")
        elif lead_ms is None:
            notes[i] = ("", "internal")
        elif r.time_ms < lead_ms:
            notes[i] = ("", "internal, before the lead: not a reply to it")
        elif reply_ms is not None and (r.time_ms, i) > (reply_ms, reply_id):
            notes[i] = ("", "internal, after the first reply")
        elif not r.to_external:
            notes[i] = ("", "internal with no external address in To/Cc (a forward or note to "
                        "colleagues): not a reply")
        else:
            notes[i] = ("", "internal")
    return notes
