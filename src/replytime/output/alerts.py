"""`replytime alert`: open leads waiting longer than their threshold, posted once each to
Slack (Block Kit), Microsoft Teams (an Adaptive Card through a workflow webhook) or mail
(docs/configuration.md, "`[alerts]`").

Which leads: the unanswered queue of ``Analysis.unanswered`` (leads received within
``lookback``), waiting longer than the rep's threshold, else the team's, else
``older_than``, in business time by default (docs/definitions.md, "Business time"). A lead
answered before the run is not in the queue, so it is never alerted.

Once each: the cache's ``alerts`` table holds (lead, channel) for every alert delivered,
written right after that delivery succeeded. A rerun skips what is there; a failed
delivery leaves nothing there, so the next run sends it (and only it) again.

Everything posted comes from mail headers (addresses, subjects): Slack gets it as
``plain_text`` objects and Teams as ``TextRun``s, neither of which formats markdown or
links, so a subject cannot inject a link or a mention.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from replytime.analysis.leadset import Selection
from replytime.analysis.reports import Analysis
from replytime.config import Alerts, Config
from replytime.errors import ConfigError, DeliveryFailed
from replytime.output import delivery
from replytime.periods import Period, format_duration

SLACK_MAX_BLOCKS = 50  # Block Kit: at most 50 blocks per message
SLACK_HEADER_MAX = 150  # header block: plain_text of at most 150 characters
SLACK_TEXT_MAX = 3000  # section text
# Leads listed in one digest message, the rest counted: two Slack blocks each (divider,
# section) plus header, "and N more" and footer stay within the 50 blocks.
DIGEST_MAX_LEADS = 20
ADAPTIVE_CARD_VERSION = "1.4"  # RichTextBlock needs 1.2; Teams renders up to 1.5


@dataclass(frozen=True)
class Stale:
    """One open lead over its threshold."""

    lead_key: str  # the lead's Message-ID, else "thread:" + its thread id
    lead_message_id: str | None
    rep: str | None
    team: str | None
    lead_from: str
    subject: str
    lead_time_ms: int
    age_s: float
    business_age_s: float | None
    waiting_s: float  # in the basis the thresholds are counted in
    threshold_s: int

    def to_dict(self, tz: Any, channels: list[str]) -> dict[str, Any]:
        return {
            "lead_id": self.lead_key, "rep": self.rep, "team": self.team,
            "lead_from": self.lead_from, "subject": self.subject,
            "lead_time": datetime.fromtimestamp(self.lead_time_ms / 1000, tz).isoformat(),
            "age_s": round(self.age_s), "business_age_s": (
                None if self.business_age_s is None else round(self.business_age_s)),
            "waiting_s": round(self.waiting_s), "threshold_s": self.threshold_s,
            "channels": channels,
        }


@dataclass
class Plan:
    """What one run sends: per channel, the stale leads not yet alerted there."""

    basis: str
    tz: Any
    as_of_ms: int
    stale: list[Stale]
    pending: dict[str, list[Stale]]  # channel -> leads, in the order of ``stale``
    sent: dict[str, int] = field(default_factory=dict)  # channel -> leads delivered
    failures: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """`alert --dry-run --format json`: the leads some channel would get."""
        out = []
        for s in self.stale:
            channels = [c for c, leads in self.pending.items() if s in leads]
            if channels:
                out.append(s.to_dict(self.tz, channels))
        return out


def _key(message_id: object, thread_id: object) -> str:
    if isinstance(message_id, str) and message_id:
        return message_id
    return f"thread:{thread_id}"


def stale_leads(analysis: Analysis, alerts: Alerts) -> tuple[str, list[Stale]]:
    """The basis used and the open leads over their threshold, oldest first."""
    basis = analysis.basis(alerts.basis)  # type: ignore[arg-type]
    since = analysis.as_of_ms - alerts.lookback_s * 1000
    sel = Selection(Period(since, None), (), None)
    queue = analysis.unanswered(sel, basis=basis)  # type: ignore[arg-type]
    if queue.empty:
        return basis, []
    leads = analysis.select(sel)
    ids = leads.loc[~leads["answered"], ["lead_message_id", "thread_id", "lead_id"]]
    lead_id = {(m, t): i for m, t, i in ids.itertuples(index=False)}
    subjects = analysis.subjects(pd.Series(list(lead_id.values())))
    teams = {r.name: r.team for r in analysis.config.reps}
    has_business = "business_age_s" in queue
    out = []
    for r in queue.itertuples(index=False):  # the stale ones are few: a row loop is fine
        rep = None if pd.isna(r.rep) else str(r.rep)
        team = teams.get(rep) if rep else None
        business = float(r.business_age_s) if has_business and pd.notna(
            r.business_age_s) else None
        waiting = business if basis == "business" and business is not None else float(r.age_s)
        limit = alerts.threshold_s(rep, team)
        if waiting <= limit:  # "older than": strictly longer, as report unanswered
            continue
        subject = subjects.get(lead_id.get((r.lead_message_id, r.thread_id)))
        out.append(Stale(
            lead_key=_key(r.lead_message_id, r.thread_id),
            lead_message_id=r.lead_message_id if isinstance(r.lead_message_id, str) else None,
            rep=rep, team=team, lead_from=str(r.lead_from),
            subject="" if subject is None or subject != subject else str(subject),
            lead_time_ms=int(r.lead_time_ms), age_s=float(r.age_s), business_age_s=business,
            waiting_s=waiting, threshold_s=limit,
        ))
    return basis, out


def plan(analysis: Analysis, config: Config) -> Plan:
    alerts = config.alerts
    if alerts is None:
        raise ConfigError("alerts", "no [alerts] section: add one (docs/configuration.md)")
    channels = alerts.channels()
    if not channels:
        raise ConfigError("alerts", "no channel: set slack_webhook_env (or _file, _command), "
                          "teams_webhook_env (or _file, _command) or mail_to")
    if "mail" in channels:
        d = config.delivery
        if d is None or d.sender is None:
            raise ConfigError("alerts.mail_to", "mail alerts need [delivery] with from and host")
    basis, stale = stale_leads(analysis, alerts)
    keys = [s.lead_key for s in stale]
    pending = {}
    for channel in channels:
        done = analysis.cache.alerted(channel, keys)
        pending[channel] = [s for s in stale if s.lead_key not in done]
    return Plan(basis, analysis.tz, analysis.as_of_ms, stale, pending)


# -- what each channel gets -----------------------------------------------------------------
def _when(s: Stale, tz: Any) -> str:
    return datetime.fromtimestamp(s.lead_time_ms / 1000, tz).strftime("%a %d %b %H:%M %Z")


def _facts(s: Stale, plan: Plan) -> list[tuple[str, str]]:
    return [
        ("From", s.lead_from),
        ("Rep", s.rep or "(unassigned)"),
        ("Received", _when(s, plan.tz)),
        ("Waiting", f"{format_duration(s.waiting_s)} ({plan.basis} time; alert after "
                    f"{format_duration(s.threshold_s)})"),
        ("Subject", s.subject or "(no subject)"),
        ("Message-ID", s.lead_message_id or s.lead_key),
    ]


def _headline(s: Stale, plan: Plan) -> str:
    return f"Lead waiting {format_duration(s.waiting_s)}: {s.lead_from}"


def _digest_headline(leads: list[Stale]) -> str:
    n = len(leads)
    return f"{n} lead{'s' if n != 1 else ''} waiting for a first reply"


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": _clip(text, limit), "emoji": False}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _slack_lead_blocks(s: Stale, plan: Plan) -> list[dict[str, Any]]:
    facts = _facts(s, plan)
    return [{"type": "section", "fields": [
        _plain(f"{label}: {value}", 2000) for label, value in facts]}]


def slack_payload(leads: list[Stale], plan: Plan) -> dict[str, Any]:
    """An incoming-webhook message: ``text`` (the notification and fallback) and
    ``blocks``. One lead, or a digest of several."""
    if len(leads) == 1:
        s = leads[0]
        head = _headline(s, plan)
        blocks = [{"type": "header", "text": _plain(head, SLACK_HEADER_MAX)},
                  *_slack_lead_blocks(s, plan)]
    else:
        head = _digest_headline(leads)
        blocks = [{"type": "header", "text": _plain(head, SLACK_HEADER_MAX)}]
        shown = leads[:DIGEST_MAX_LEADS]
        for s in shown:
            blocks.append({"type": "divider"})
            blocks.extend(_slack_lead_blocks(s, plan))
        if len(leads) > len(shown):
            blocks.append({"type": "context", "elements": [
                _plain(f"and {len(leads) - len(shown)} more: replytime report unanswered",
                       SLACK_TEXT_MAX)]})
    blocks.append({"type": "context", "elements": [
        _plain(f"replytime · {plan.basis} time", SLACK_TEXT_MAX)]})
    assert len(blocks) <= SLACK_MAX_BLOCKS
    return {"text": _clip(head, SLACK_TEXT_MAX), "blocks": blocks}


def _runs(label: str, value: str) -> dict[str, Any]:
    return {"type": "RichTextBlock", "inlines": [
        {"type": "TextRun", "text": f"{label}: ", "weight": "Bolder"},
        {"type": "TextRun", "text": value}]}


def teams_payload(leads: list[Stale], plan: Plan) -> dict[str, Any]:
    """A message with one Adaptive Card attachment, as a Teams workflow ("Post to a
    channel when a webhook request is received") takes it."""
    head = _headline(leads[0], plan) if len(leads) == 1 else _digest_headline(leads)
    body: list[dict[str, Any]] = [{"type": "RichTextBlock", "inlines": [
        {"type": "TextRun", "text": head, "weight": "Bolder", "size": "Medium"}]}]
    shown = leads[:DIGEST_MAX_LEADS]
    for s in shown:
        body.append({"type": "Container", "separator": len(leads) > 1, "items": [
            _runs(label, value) for label, value in _facts(s, plan)]})
    if len(leads) > len(shown):
        body.append({"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": (
            f"and {len(leads) - len(shown)} more: replytime report unanswered")}]})
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard", "version": ADAPTIVE_CARD_VERSION, "body": body}
    return {"type": "message", "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
        "content": card}]}


def mail_text(leads: list[Stale], plan: Plan) -> tuple[str, str]:
    """Subject and plain-text body of an alert mail."""
    head = _headline(leads[0], plan) if len(leads) == 1 else _digest_headline(leads)
    parts = []
    for s in leads:
        parts.append("\n".join(f"{label + ':':<12}{value}" for label, value in _facts(s, plan)))
    return head, "\n\n".join(parts) + f"\n\n-- \nreplytime alert ({plan.basis} time)\n"


# -- sending ------------------------------------------------------------------------------
Send = Callable[[str, list[Stale]], None]


def _sender(config: Config, plan: Plan, sleep: Callable[[float], None],
            mail_oauth_token: str | None) -> Send:
    alerts = config.alerts
    assert alerts is not None

    def send(channel: str, leads: list[Stale]) -> None:
        if channel == "mail":
            from replytime.output.mail import new_message

            d = config.delivery
            assert d is not None and d.sender is not None
            subject, text = mail_text(leads, plan)
            msg = new_message(d.sender, alerts.mail_to, subject)
            msg.set_content(text)
            delivery.send_mail(d, msg, alerts.mail_to, oauth_token=mail_oauth_token,
                               sleep=sleep)
            return
        payload = (slack_payload if channel == "slack" else teams_payload)(leads, plan)
        delivery.post_json(alerts.webhook_url(channel), payload,
                           what=f"{channel.capitalize()} webhook", timeout_s=alerts.timeout_s,
                           retries=alerts.retries, ca_file=alerts.ca_file, sleep=sleep)

    return send


def deliver(plan: Plan, analysis: Analysis, config: Config,
            sleep: Callable[[float], None] = time.sleep,
            mail_oauth_token: str | None = None) -> Plan:
    """Send what ``plan`` holds and record each delivery as it succeeds. A channel stops
    at its first failure (the rest of its leads wait for the next run); the others go on.
    ``plan.failures`` lists what failed."""
    alerts = config.alerts
    assert alerts is not None
    for channel, leads in plan.pending.items():
        # A missing secret is a config error before anything is sent.
        if leads and channel == "mail":
            assert config.delivery is not None
            delivery.smtp_ready(config.delivery)
        elif leads:
            alerts.webhook_url(channel)
    send = _sender(config, plan, sleep, mail_oauth_token)
    cache = analysis.cache
    for channel, leads in plan.pending.items():
        plan.sent[channel] = 0
        batches = [leads] if alerts.digest and leads else [[s] for s in leads]
        for batch in batches:
            try:
                send(channel, batch)
            except DeliveryFailed as exc:
                plan.failures.append(f"{channel}: {exc}")
                break
            cache.mark_alerted(channel, [s.lead_key for s in batch])
            plan.sent[channel] += len(batch)
    return plan


__all__ = ["Plan", "Stale", "deliver", "plan", "slack_payload", "stale_leads",
           "teams_payload"]
