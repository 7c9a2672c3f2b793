"""Email leads paired in the database (``replytime.store.pairing``) and finished here as
``matcher.match_leads`` finishes them: lead filters, attribution, response times.

The pandas path reads every message of the threads active in a period into pandas
(``Cache.messages(active=...)`` + ``matcher.match_leads``); this one reads one row per
lead. Form leads (``[[leads.forms]]``) search every thread and stay in pandas.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from replytime.analysis.matcher import Roster, lead_table, passes_filters
from replytime.config import Config
from replytime.store.base import CacheBase
from replytime.store.pairing import DETAIL_COLUMNS, PAIR_COLUMNS, lead_pairs


def email_lead_pairs(
    cache: CacheBase,
    config: Config | Roster,
    since_ms: int | None,
    until_ms: int | None,
    as_of_ms: int,
    *,
    exclude_lead_ids: Iterable[int] = (),
    details: bool = False,
) -> pd.DataFrame:
    """Every email lead with lead time in [since_ms, until_ms) (None = open) as of
    ``as_of_ms`` and its first reply, as ``matcher.match_leads`` finds them: columns
    ``PAIR_COLUMNS`` (reply columns null when unanswered), ordered by lead time and id;
    ``details`` adds ``DETAIL_COLUMNS``.

    The configured lead filters (``[leads] to / exclude_from / labels``) are applied as the
    matcher applies them. ``exclude_lead_ids`` are form leads' message ids: the matcher
    counts such a message as a form lead, not an email lead."""
    roster = config if isinstance(config, Roster) else Roster(config)
    cfg = roster.config
    f = cfg.leads
    filtered = bool(f.to or f.exclude_from or f.labels)
    df = lead_pairs(cache, cfg.internal_domains, roster.addresses, since_ms, until_ms,
                    as_of_ms, details=details or filtered, labels=details or bool(f.labels),
                    subdomains=cfg.internal_subdomains)
    excluded = set(exclude_lead_ids)
    if excluded:
        df = df[~df["lead_id"].isin(excluded)]
    if filtered:
        df = df[passes_filters(df, df["lead_from"], cfg)]
    df = df.reset_index(drop=True)
    return df[PAIR_COLUMNS + DETAIL_COLUMNS] if details else df[PAIR_COLUMNS]


def email_leads(
    cache: CacheBase,
    config: Config,
    since_ms: int | None,
    until_ms: int | None,
    as_of_ms: int,
    *,
    exclude_lead_ids: Iterable[int] = (),
) -> pd.DataFrame:
    """The email rows of ``matcher.match_leads`` (``LEAD_COLUMNS``, kind "email") for leads
    in [since_ms, until_ms), built from ``email_lead_pairs(details=True)`` without reading
    the messages of the period into pandas."""
    roster = Roster(config)
    p = email_lead_pairs(cache, roster, since_ms, until_ms, as_of_ms,
                         exclude_lead_ids=exclude_lead_ids, details=True)
    found = p.drop(columns=["to_addrs", "cc_addrs", "labels"]).assign(kind="email")
    return lead_table(found, p.rename(columns={"lead_id": "id"}), roster)
