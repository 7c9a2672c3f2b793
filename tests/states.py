"""Cache states that have no or few leads, for the empty-state tests of the CLI
(tests/test_cli_states.py) and the Python API (tests/test_reports.py)."""

from __future__ import annotations

from tests.mailbuilder import Mailbox, at


def _outbound_only(mb: Mailbox) -> None:
    for day in range(3):
        mb.send("alice@acme.example", f"p{day}@client.example", at(day, 10),
                subject=f"Following up {day}")
    mb.send("bob@acme.example", "carol@acme.example", at(1, 11), subject="Internal")


def _automated_only(mb: Mailbox) -> None:
    mb.send("MAILER-DAEMON@mx.client.example", "alice@acme.example", at(0, 9),
            subject="Undelivered Mail Returned to Sender")
    mb.send("pat@client.example", "bob@acme.example", at(1, 9), subject="Out of office",
            headers={"Auto-Submitted": "auto-replied"})
    mb.send("news@vendor.example", "sales@acme.example", at(2, 9), subject="Newsletter",
            headers={"List-Unsubscribe": "<mailto:u@vendor.example>", "Precedence": "bulk"})


def _one_lead(mb: Mailbox) -> None:
    lead = mb.send("Pat <pat@client.example>", "alice@acme.example", at(0, 9))
    mb.send("alice@acme.example", "pat@client.example", at(0, 9, 45), parent=lead)


def _unanswered_only(mb: Mailbox) -> None:
    for i, rep in enumerate(("alice", "bob", "sales")):
        mb.send(f"q{i}@client{i}.example", f"{rep}@acme.example", at(i, 10 + i),
                subject=f"Question {i}")


def _mixed(mb: Mailbox) -> None:
    """A few days of everything: answered, handed off, unanswered, automated, outbound."""
    l1 = mb.send("Pat <pat@client.example>", "sales@acme.example", at(0, 9))
    mb.send("alice@acme.example", "pat@client.example", at(0, 9, 30), parent=l1)
    mb.send("pat@client.example", "alice@acme.example", at(0, 12), parent=l1)
    l2 = mb.send("=cmd@evil.example", "bob@acme.example", at(1, 16), subject="Quote")
    mb.send("alice@acme.example", "=cmd@evil.example", at(2, 10), parent=l2)
    mb.send("quinn@other.example", "carol@acme.example", at(2, 9), subject="Hello")
    mb.send("ooo@other.example", "carol@acme.example", at(2, 9, 1), subject="Auto: Hello",
            headers={"Auto-Submitted": "auto-replied"})
    l4 = mb.send("rae@far.example", "carol@acme.example", at(3, 23), subject="Demo")
    mb.send("carol@acme.example", "rae@far.example", at(6, 8), parent=l4)
    mb.send("bob@acme.example", "new@prospect.example", at(4, 10), subject="Intro")
    mb.send("undated@client.example", "bob@acme.example", None, subject="No date")


# States in which no period holds a lead.
LEADLESS = ("empty", "outbound_only", "automated_only")

BUILDERS = {
    "outbound_only": _outbound_only,
    "automated_only": _automated_only,
    "one_lead": _one_lead,
    "unanswered_only": _unanswered_only,
    "mixed": _mixed,
}


