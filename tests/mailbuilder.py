"""Build small hand-made mailboxes for tests: headers in, cache + analysis out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from replytime.api import Analysis, refresh_threads
from replytime.config import Config, parse_config
from replytime.sources.headers import parse_header_block
from replytime.store import open_cache

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday

BASE_CONFIG = {
    "team": {"internal_domains": ["acme.example"], "shared_inboxes": ["sales@acme.example"],
             "timezone": "UTC"},
    "reps": [
        {"name": "Alice", "emails": ["alice@acme.example", "a.ng@acme.example"], "team": "East"},
        {"name": "Bob", "emails": ["bob@acme.example"], "team": "East"},
        {"name": "Carol", "emails": ["carol@acme.example"], "team": "West"},
    ],
}


def toml(data: dict[str, Any]) -> str:
    """A config dict of the shapes the tests use (tables, arrays of tables, one level of
    sub-tables or arrays of them; strings, booleans, numbers and lists of them) as TOML
    text."""
    def value(v: Any) -> str:
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    out: list[str] = []
    for key, table in data.items():
        if isinstance(table, list):
            for item in table:
                out.append(f"[[{key}]]")
                out += [f"{k} = {value(v)}" for k, v in item.items()]
        else:
            def tables(v: Any) -> bool:
                return isinstance(v, dict) or (
                    isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v))

            scalars = {k: v for k, v in table.items() if not tables(v)}
            out.append(f"[{key}]")
            out += [f"{k} = {value(v)}" for k, v in scalars.items()]
            for name, sub in table.items():
                if isinstance(sub, dict):
                    out.append(f"[{key}.{name}]")
                    out += [f"{k} = {value(v)}" for k, v in sub.items()]
                elif tables(sub):
                    for item in sub:
                        out.append(f"[[{key}.{name}]]")
                        out += [f"{k} = {value(v)}" for k, v in item.items()]
    return "\n".join(out) + "\n"


# The same team as a config file, one address per rep (the CLI tests write it next to a
# cache; [delivery] or [alerts] tables can follow it).
TEAM_TOML = toml({**BASE_CONFIG, "reps": [{**rep, "emails": rep["emails"][:1]}
                                         for rep in BASE_CONFIG["reps"]]})


def at(day: int = 0, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return MONDAY + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


@dataclass
class Mailbox:
    """Messages written as header text; ``send`` returns the Message-ID."""

    tmp: Path
    config_data: dict = field(default_factory=lambda: dict(BASE_CONFIG))
    blocks: list[bytes] = field(default_factory=list)
    counter: int = 0

    def send(
        self,
        frm: str,
        to: str | list[str],
        when: datetime | None,
        *,
        cc: str | list[str] = (),
        reply_to: str | None = None,
        subject: str = "Pricing question",
        parent: str | None = None,
        refs: list[str] | None = None,
        headers: dict[str, str] | None = None,
        message_id: str | None = "auto",
    ) -> str:
        self.counter += 1
        mid = f"m{self.counter}@test.example" if message_id == "auto" else message_id
        lines = [f"From: {frm}", f"To: {', '.join([to] if isinstance(to, str) else to)}"]
        cc_list = [cc] if isinstance(cc, str) else list(cc)
        if cc_list:
            lines.append(f"Cc: {', '.join(cc_list)}")
        if reply_to:
            lines.append(f"Reply-To: {reply_to}")
        if when is not None:
            lines.append(f"Date: {format_datetime(when)}")
        if mid:
            lines.append(f"Message-ID: <{mid}>")
        lines.append(f"Subject: {subject}")
        if parent:
            lines.append(f"In-Reply-To: <{parent}>")
            lines.append("References: " + " ".join(f"<{r}>" for r in (refs or [parent])))
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        self.blocks.append(("\r\n".join(lines) + "\r\n\r\n").encode())
        return mid or ""

    @property
    def config(self) -> Config:
        return parse_config(self.config_data)

    def analysis(self, as_of: datetime | str | None = None) -> Analysis:
        cache = open_cache(self.tmp / "cache.sqlite")
        cfg = self.config
        records = [
            (f"test/{i}", parse_header_block(b, keep=cfg.kept_headers()))
            for i, b in enumerate(self.blocks)
        ]
        cache.write_batch("test", records)
        refresh_threads(cache, cfg, force=True)
        return Analysis(cache, cfg, as_of=as_of or at(30))
