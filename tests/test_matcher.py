"""One small hand-built thread per rule of docs/definitions.md, with exact seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from replytime.errors import UsageError
from tests.mailbuilder import Mailbox, at

PROSPECT = "Pat Prospect <pat@client.example>"


@pytest.fixture
def mb(tmp_path: Path) -> Mailbox:
    return Mailbox(tmp_path)


def one_lead(mb: Mailbox, **kw: object) -> dict:
    leads = mb.analysis(**kw).all_leads
    assert len(leads) == 1, leads
    return leads.iloc[0].to_dict()


def test_first_human_reply_answers_the_lead(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 10))
    reply = mb.send("Alice <alice@acme.example>", "pat@client.example", at(0, 10, 42, 5),
                    parent=lead)
    mb.send(PROSPECT, "alice@acme.example", at(0, 11), parent=reply)
    mb.send("bob@acme.example", "pat@client.example", at(0, 12), parent=reply)
    row = one_lead(mb)
    assert row["lead_message_id"] == lead
    assert row["lead_from"] == "pat@client.example"
    assert row["reply_message_id"] == reply
    assert row["responder"] == "Alice" and row["rep"] == "Alice"
    assert row["response_s"] == 42 * 60 + 5


def test_automated_acknowledgement_is_not_a_reply(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    mb.send("sales@acme.example", "pat@client.example", at(0, 9, 0, 3), parent=lead,
            headers={"Auto-Submitted": "auto-replied"})
    reply = mb.send("bob@acme.example", "pat@client.example", at(0, 9, 30), parent=lead)
    row = one_lead(mb)
    assert row["reply_message_id"] == reply and row["response_s"] == 1800


@pytest.mark.parametrize(
    "header",
    [
        {"Auto-Submitted": "auto-generated"},
        {"X-Autoreply": "yes"},
        {"X-Autorespond": "1"},
        {"X-Auto-Response-Suppress": "All"},
        {"Precedence": "bulk"},
        {"Precedence": "junk"},
        {"Precedence": "list"},
        {"Precedence": "auto_reply"},
        {"List-Id": "<news.client.example>"},
        {"List-Unsubscribe": "<mailto:unsub@client.example>"},
        {"Content-Type": 'multipart/report; report-type="delivery-status"'},
    ],
)
def test_automated_messages_never_start_a_lead(mb: Mailbox, header: dict[str, str]) -> None:
    mb.send(PROSPECT, "sales@acme.example", at(0, 9), headers=header)
    assert mb.analysis().all_leads.empty


@pytest.mark.parametrize("sender", ["noreply@client.example", "no-reply@client.example",
                                    "MAILER-DAEMON@client.example", "postmaster@client.example"])
def test_noreply_senders_never_start_a_lead(mb: Mailbox, sender: str) -> None:
    mb.send(sender, "sales@acme.example", at(0, 9))
    assert mb.analysis().all_leads.empty


def test_auto_submitted_no_is_human(mb: Mailbox) -> None:
    mb.send(PROSPECT, "sales@acme.example", at(0, 9), headers={"Auto-Submitted": "no"})
    assert len(mb.analysis().all_leads) == 1


def test_lead_starts_at_first_non_automated_message(mb: Mailbox) -> None:
    news = mb.send("news@client.example", "sales@acme.example", at(0, 8),
                   headers={"List-Id": "<x.client.example>"})
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9), parent=news)
    row = one_lead(mb)
    assert row["lead_message_id"] == lead
    assert row["lead_time_ms"] == int(at(0, 9).timestamp() * 1000)


def test_internal_forward_is_not_a_reply_but_colleagues_answer_is(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "alice@acme.example", at(0, 10))
    fwd = mb.send("alice@acme.example", "bob@acme.example", at(0, 10, 5), parent=lead,
                  subject="Fwd: Pricing question")
    reply = mb.send("bob@acme.example", ["pat@client.example"], at(0, 11), cc="alice@acme.example",
                    parent=fwd, refs=[lead, fwd])
    row = one_lead(mb)
    assert row["reply_message_id"] == reply
    assert row["responder"] == "Bob" and row["rep"] == "Bob"
    assert row["addressed_rep"] == "Alice"
    assert row["response_s"] == 3600
    reps = mb.analysis().reps().set_index("rep")
    assert reps.loc["Bob", "handoffs_in"] == 1 and reps.loc["Alice", "handoffs_out"] == 1


def test_threads_started_internally_are_not_leads(mb: Mailbox) -> None:
    out = mb.send("alice@acme.example", "pat@client.example", at(0, 9))
    mb.send(PROSPECT, "alice@acme.example", at(0, 10), parent=out)
    mb.send("alice@acme.example", "bob@acme.example", at(0, 9), subject="internal only")
    assert mb.analysis().all_leads.empty


def test_further_lead_messages_do_not_restart_the_clock(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    again = mb.send(PROSPECT, "sales@acme.example", at(0, 12), parent=lead)
    mb.send("carol@acme.example", "pat@client.example", at(0, 13), parent=again,
            refs=[lead, again])
    row = one_lead(mb)
    assert row["response_s"] == 4 * 3600 and row["responder"] == "Carol"


def test_reply_stamped_before_the_lead_makes_the_thread_outbound(mb: Mailbox) -> None:
    # Clock skew: the rep's message is stamped before the prospect's. By the letter of
    # the definitions the earliest non-automated message is internal, so this is no lead at all.
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    mb.send("alice@acme.example", "pat@client.example", at(0, 8, 59), parent=lead)
    assert mb.analysis().all_leads.empty


def test_reply_at_the_lead_time_counts_with_zero_seconds(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    same = mb.send("alice@acme.example", "pat@client.example", at(0, 9, 0), parent=lead)
    row = one_lead(mb)
    assert row["reply_message_id"] == same and row["response_s"] == 0 and not row["clamped"]


def test_reply_must_have_an_external_recipient(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    mb.send("alice@acme.example", "sales@acme.example", at(0, 9, 10), parent=lead)
    row = one_lead(mb)
    assert not row["answered"]


def test_unanswered_attribution_to_before_cc(mb: Mailbox) -> None:
    mb.send(PROSPECT, ["sales@acme.example", "carol@acme.example"], at(0, 9),
            cc="bob@acme.example")
    mb.send("Quinn <quinn@other.example>", "sales@acme.example", at(0, 10), cc="bob@acme.example",
            subject="Another")
    mb.send("ray@third.example", "sales@acme.example", at(0, 11), subject="Third")
    a = mb.analysis(as_of=at(1, 9))
    leads = a.all_leads.set_index("lead_from")
    assert leads.loc["pat@client.example", "rep"] == "Carol"
    assert leads.loc["quinn@other.example", "rep"] == "Bob"
    assert leads.loc["ray@third.example", "rep"] == "(unassigned)"
    u = a.unanswered()
    assert list(u["lead_from"]) == ["pat@client.example", "quinn@other.example",
                                    "ray@third.example"]
    assert list(u["age_s"]) == [86400, 82800, 79200]


def test_reply_after_as_of_is_not_yet_a_reply(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    mb.send("alice@acme.example", "pat@client.example", at(2, 9), parent=lead)
    assert not one_lead(mb, as_of=at(1))["answered"]
    assert one_lead(mb, as_of=at(2, 9))["answered"]


def test_internal_address_outside_roster_reported_as_itself(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    mb.send("dave@acme.example", "pat@client.example", at(0, 9, 1), parent=lead)
    assert one_lead(mb)["rep"] == "dave@acme.example"


def test_addresses_compare_case_insensitively(mb: Mailbox) -> None:
    lead = mb.send("PAT@Client.Example", "sales@acme.example", at(0, 9))
    mb.send("Alice <ALICE@ACME.EXAMPLE>", "Pat@client.example", at(0, 9, 2), parent=lead)
    row = one_lead(mb)
    assert row["rep"] == "Alice" and row["response_s"] == 120


def test_message_without_time_is_left_out(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    mb.send("alice@acme.example", "pat@client.example", None, parent=lead)
    a = mb.analysis()
    assert not a.all_leads.iloc[0]["answered"]
    assert a.cache.status()["no_time"] == 1


def test_lead_filters(mb: Mailbox) -> None:
    mb.config_data = {**mb.config_data, "leads": {"to": ["sales@acme.example"],
                                                  "exclude_from": ["*@partner.example"]}}
    mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    mb.send("x@partner.example", "sales@acme.example", at(0, 9), subject="partner")
    mb.send("y@else.example", "alice@acme.example", at(0, 9), subject="direct")
    leads = mb.analysis().all_leads
    assert list(leads["lead_from"]) == ["pat@client.example"]


def test_threading_without_references_uses_subject_and_participant(mb: Mailbox) -> None:
    mb.send(PROSPECT, "sales@acme.example", at(0, 9), subject="Quote for 40 seats")
    # A client that drops In-Reply-To/References: same subject, shared external participant.
    mb.send("alice@acme.example", "pat@client.example", at(0, 10), subject="RE: Quote for 40 seats")
    # Same subject, different prospect: a separate lead.
    mb.send("zed@other.example", "sales@acme.example", at(0, 11), subject="Quote for 40 seats")
    leads = mb.analysis().all_leads.set_index("lead_from")
    assert leads.loc["pat@client.example", "response_s"] == 3600
    assert not leads.loc["zed@other.example", "answered"]


def test_subject_rule_stops_after_14_days(mb: Mailbox) -> None:
    mb.send(PROSPECT, "sales@acme.example", at(0, 9), subject="Demo")
    mb.send("alice@acme.example", "pat@client.example", at(14, 9, 1), subject="Re: Demo")
    assert not one_lead(mb)["answered"]


def test_reps_statistics_exact(mb: Mailbox) -> None:
    for i, minutes in enumerate([10, 20, 30, 40, 100]):
        lead = mb.send(f"p{i}@client.example", "sales@acme.example", at(0, 9), subject=f"L{i}")
        mb.send("alice@acme.example", f"p{i}@client.example", at(0, 9, minutes), parent=lead)
    mb.send("p9@client.example", "alice@acme.example", at(0, 9), subject="open")
    reps = mb.analysis().reps(basis="calendar").set_index("rep")
    alice = reps.loc["Alice"]
    assert alice["leads"] == 6 and alice["answered"] == 5 and alice["unanswered"] == 1
    assert alice["reply_rate"] == pytest.approx(5 / 6)
    assert alice["mean_s"] == 40 * 60
    assert alice["median_s"] == 30 * 60
    assert alice["p90_s"] == pytest.approx((40 + 0.6 * 60) * 60)  # numpy linear: 40 + .6*(100-40)
    assert alice["min_s"] == 600 and alice["max_s"] == 6000
    assert alice["within_sla"] == pytest.approx(4 / 6)  # 4 within 1h; unanswered counts against
    assert reps.loc["Bob", "leads"] == 0


def test_period_is_half_open(mb: Mailbox) -> None:
    mb.send("a@client.example", "sales@acme.example", at(0, 0), subject="a")
    mb.send("b@client.example", "sales@acme.example", at(6, 23, 59, 59), subject="b")
    mb.send("c@client.example", "sales@acme.example", at(7, 0), subject="c")
    a = mb.analysis()
    got = a.leads(since="2026-11-02", until="2026-11-09")["lead_from"].tolist()
    assert got == ["a@client.example", "b@client.example"]


def test_unknown_rep_is_a_usage_error(mb: Mailbox) -> None:
    mb.send(PROSPECT, "sales@acme.example", at(0, 9))
    with pytest.raises(UsageError, match="unknown rep 'Zoe'"):
        mb.analysis().reps(rep="Zoe")


def test_form_lead_answered_in_a_new_thread(mb: Mailbox) -> None:
    mb.config_data = {**mb.config_data, "leads": {"forms": [
        {"from": "wordpress@acme.example", "subject": "^New lead"}]}}
    note = mb.send("wordpress@acme.example", "sales@acme.example", at(0, 9),
                   reply_to="Pat <pat@client.example>", subject="New lead: Pat",
                   headers={"Auto-Submitted": "auto-generated"})
    mb.send("wordpress@acme.example", "sales@acme.example", at(0, 9, 30),
            reply_to="pat@client.example", subject="New lead: Pat again")
    reply = mb.send("carol@acme.example", "pat@client.example", at(0, 11), subject="Your enquiry")
    # After the reply, a new notification is a new lead (unanswered).
    mb.send("wordpress@acme.example", "sales@acme.example", at(1, 9),
            reply_to="pat@client.example", subject="New lead: Pat third")
    leads = mb.analysis().all_leads
    assert list(leads["kind"]) == ["form", "form"]
    first = leads.iloc[0]
    assert first["lead_message_id"] == note and first["reply_message_id"] == reply
    assert first["response_s"] == 7200 and first["lead_from"] == "pat@client.example"
    assert not leads.iloc[1]["answered"]


FORMS = {"forms": [{"from": "wordpress@acme.example", "subject": "^New (lead|enquiry)"},
                   {"from": "*@chat.example", "lead_address": "header:X-Lead-Email",
                    "reply_window": "2d"}]}


def test_form_lead_answered_by_replying_to_the_notification(mb: Mailbox) -> None:
    mb.config_data = {**mb.config_data, "leads": FORMS}
    note = mb.send("wordpress@acme.example", "sales@acme.example", at(0, 9),
                   reply_to="pat@client.example", subject="New enquiry: Pat")
    reply = mb.send("alice@acme.example", "pat@client.example", at(0, 9, 20), parent=note,
                    subject="Re: New enquiry: Pat")
    leads = mb.analysis().all_leads
    assert len(leads) == 1  # the notification's thread is not also an email lead
    row = leads.iloc[0]
    assert row["kind"] == "form" and row["reply_message_id"] == reply
    assert row["response_s"] == 1200 and row["rep"] == "Alice"


def test_form_reply_after_the_window_leaves_the_lead_unanswered(mb: Mailbox) -> None:
    mb.config_data = {**mb.config_data, "leads": FORMS}
    mb.send("bot@chat.example", "sales@acme.example", at(0, 9), subject="Chat transcript",
            headers={"X-Lead-Email": "Quinn <QUINN@other.example>"})
    mb.send("bob@acme.example", "quinn@other.example", at(2, 9, 0, 1), subject="Following up")
    row = one_lead(mb)
    assert row["kind"] == "form" and row["lead_from"] == "quinn@other.example"
    assert not row["answered"]
    # Exactly at the end of the window still counts.
    mb2 = Mailbox(mb.tmp / "b")
    mb2.tmp.mkdir()
    mb2.config_data = {**mb.config_data}
    mb2.send("bot@chat.example", "sales@acme.example", at(0, 9), subject="Chat transcript",
             headers={"X-Lead-Email": "quinn@other.example"})
    mb2.send("bob@acme.example", "quinn@other.example", at(2, 9), subject="Following up")
    assert one_lead(mb2)["response_s"] == 2 * 86400


def test_header_form_rule_with_the_header_on_some_notifications_only(mb: Mailbox) -> None:
    # pandas makes the header values a string column with NaN where a row has none.
    mb.config_data = {**mb.config_data, "leads": FORMS}
    mb.send("bot@chat.example", "sales@acme.example", at(0, 9), subject="Chat transcript",
            headers={"Auto-Submitted": "auto-generated"})
    mb.send("bot@chat.example", "sales@acme.example", at(0, 9, 5), subject="Chat transcript",
            headers={"X-Lead-Email": "quinn@other.example"})
    leads = mb.analysis().leads(since="2026-11-02", until="2026-11-09")  # form history read
    assert list(leads["kind"]) == ["form"] and list(leads["lead_from"]) == ["quinn@other.example"]


def test_notification_without_a_lead_address_may_still_be_an_email_lead(mb: Mailbox) -> None:
    # docs/definitions.md, "Form leads": not a form lead; an ordinary one by the lead rules.
    mb.config_data = {**mb.config_data, "leads": FORMS}
    mb.send("bot@chat.example", "sales@acme.example", at(0, 9), subject="Chat transcript")
    leads = mb.analysis().all_leads
    assert list(leads["kind"]) == ["email"] and list(leads["lead_from"]) == ["bot@chat.example"]


def test_form_with_internal_reply_to_is_not_a_lead(mb: Mailbox) -> None:
    mb.config_data = {**mb.config_data, "leads": FORMS}
    mb.send("wordpress@acme.example", "sales@acme.example", at(0, 9),
            reply_to="alice@acme.example", subject="New lead: test submission")
    assert mb.analysis().all_leads.empty


def test_unanswered_form_lead_is_attributed_by_the_notifications_to(mb: Mailbox) -> None:
    mb.config_data = {**mb.config_data, "leads": FORMS}
    mb.send("wordpress@acme.example", ["sales@acme.example", "carol@acme.example"], at(0, 9),
            reply_to="pat@client.example", subject="New lead: Pat")
    row = one_lead(mb, as_of=at(0, 10))
    assert row["rep"] == "Carol" and not row["answered"]


def test_form_history_start_follows_chains_of_notifications() -> None:
    import pandas as pd

    from replytime.analysis.matcher import form_history_start

    day = 86_400_000
    w = 14 * day
    notes = pd.DataFrame({
        "lead_from": ["a"] * 4 + ["b"] * 2,
        # a: 0, 10d, 20d (chained), then a 30-day gap, then 50d. b: 100d, 101d.
        "time_ms": [0, 10 * day, 20 * day, 50 * day, 100 * day, 101 * day],
        "window_ms": w,
    })
    # Leads from day 25 on: a's chain 0-20d reaches day 25 (20 + 14 > 25): replay from 0.
    assert form_history_start(notes, 25 * day) == (0, True)
    # From day 40: a's notification of day 20 no longer reaches it; 50d follows a gap.
    assert form_history_start(notes, 40 * day) == (40 * day, True)
    # From day 105: b's chain starts at its first notification, day 100.
    assert form_history_start(notes, 105 * day) == (100 * day, True)
    # From day 200: no notification reaches it, however the history was read.
    assert form_history_start(notes, 200 * day) == (200 * day, True)
    assert form_history_start(notes[notes["time_ms"] >= 90 * day], 200 * day, 90 * day) == (
        200 * day, True)
    # Read only from day 5 on: whether day 10 follows a gap is unknown, so not enough.
    assert form_history_start(notes[notes["time_ms"] >= 5 * day], 25 * day, 5 * day)[1] is False
    # Read from day 45: day 50 is a sure break (nothing missed within its window).
    later = notes[notes["time_ms"] >= 45 * day]
    assert form_history_start(later, 55 * day, 30 * day) == (50 * day, True)


def test_label_filter_uses_the_labels_of_every_place(mb: Mailbox) -> None:
    mb.config_data = {**mb.config_data, "leads": {"labels": ["Leads"]}}
    mb.send(PROSPECT, "sales@acme.example", at(0, 9), headers={"X-Gmail-Labels": "Inbox,Leads"})
    mb.send("q@other.example", "sales@acme.example", at(0, 10), subject="other",
            headers={"X-Gmail-Labels": "Inbox"})
    assert list(mb.analysis().all_leads["lead_from"]) == ["pat@client.example"]


def test_volume_of_one_rep_counts_their_own_mail(mb: Mailbox) -> None:
    lead = mb.send(PROSPECT, "alice@acme.example", at(0, 9))
    mb.send("alice@acme.example", "pat@client.example", at(0, 10), parent=lead)
    mb.send("q@other.example", "bob@acme.example", at(0, 11), subject="for bob")
    v = mb.analysis().volume(since="2026-11-02", until="2026-11-03", rep="Alice")
    assert v[["leads", "first_replies", "inbound", "outbound", "messages"]].iloc[0].tolist() \
        == [1, 1, 1, 1, 2]
