"""Find leads and their first replies (docs/definitions.md), vectorised with pandas.

Input is the messages frame from the cache (one row per message); output is one row per
lead. Every rule below cites the definition it implements.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from replytime.config import Config, FormRule
from replytime.lists import arrow_strings, split_lists, to_series

UNASSIGNED = "(unassigned)"

LEAD_COLUMNS = [
    "thread_id",
    "kind",  # "email" or "form"
    "lead_id",  # cache row id of the lead message
    "lead_message_id",
    "lead_from",
    "lead_time_ms",
    "addressed_rep",  # first roster rep in To, then Cc, of the lead message (or None)
    "answered",
    "reply_id",
    "reply_message_id",
    "reply_time_ms",
    "reply_from",
    "responder",
    "rep",  # attribution: responder, else addressed rep, else (unassigned)
    "response_s",  # calendar seconds, clamped at 0
    "clamped",  # response time was negative and clamped (data-quality flag)
]


class Roster:
    """Vectorised questions about addresses: internal? which rep?"""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.domains = np.array(sorted(config.internal_domains), dtype=object)
        self.addresses = config.internal_addresses()
        self.rep_of = config.rep_by_address()

    def is_internal(self, addrs: pd.Series) -> pd.Series:
        """Vectorised over a Series of addresses; the string work is done once per distinct
        address (few, even in a million-message cache), then mapped back with isin."""
        column = pc.fill_null(arrow_strings(addrs), "")
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        encoded = pc.dictionary_encode(column)
        unique = pd.Series(encoded.dictionary.to_pylist(), dtype=object)
        low = unique.str.lower()
        domain = low.str.rsplit("@", n=1).str[-1]
        inside = domain.isin(self.domains)
        if self.config.internal_subdomains:
            # mx.acme.example is under acme.example: one suffix test per internal domain
            # (there are few) over the distinct domains.
            for d in self.domains:
                inside |= domain.str.endswith("." + d)
        internal = ((inside | low.isin(self.addresses)) & (low != "")).to_numpy()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        return pd.Series(internal[codes] if len(codes) else np.zeros(0, bool), index=addrs.index)

    def rep_name(self, addrs: pd.Series) -> pd.Series:
        """Roster name, else the address itself (docs/definitions.md, "Reps and attribution")."""
        names = addrs.map(self.rep_of)
        if names.dtype.kind == "f":  # nobody on the roster: all NaN, which strings cannot fill
            names = names.astype(object)
        return names.fillna(addrs)


def _explode_recipients(msgs: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """One row per (message, recipient) with the recipient's position (To before Cc)."""
    ids = msgs["id"].to_numpy()
    parts = []
    for rank, col in enumerate(columns):
        rows, addrs = split_lists(msgs[col])
        parts.append(pd.DataFrame({"id": ids[rows], "addr": to_series(addrs), "rank": rank}))
    out = pd.concat(parts, ignore_index=True)
    out["pos"] = np.arange(len(out))  # stable order within a header
    return out


def prepare(messages: pd.DataFrame, roster: Roster) -> pd.DataFrame:
    """Add the per-message flags the rules need: internal sender, external recipient."""
    m = messages.copy()
    m["from_internal"] = roster.is_internal(m["from_addr"]).to_numpy()
    rcpt = _explode_recipients(m, ("to_addrs", "cc_addrs"))
    ext_ids = rcpt.loc[~roster.is_internal(rcpt["addr"]).to_numpy(), "id"].unique()
    m["to_external"] = m["id"].isin(ext_ids).to_numpy()
    m["timed"] = m["time_ms"].notna().to_numpy()
    return m


def addressed_rep(lead_msgs: pd.DataFrame, roster: Roster) -> pd.Series:
    """docs/definitions.md, "Reps and attribution": the rep a lead was addressed to (To before Cc,
    first match)."""
    rcpt = _explode_recipients(lead_msgs, ("to_addrs", "cc_addrs"))
    rcpt["rep"] = rcpt["addr"].map(roster.rep_of)
    hit = rcpt.dropna(subset=["rep"]).sort_values(["id", "rank", "pos"])
    return hit.groupby("id")["rep"].first()


def _email_leads(m: pd.DataFrame, roster: Roster) -> pd.DataFrame:
    """docs/definitions.md, "Lead": threads whose earliest non-automated message is external."""
    # Sorted on three columns only: reordering every column of a million rows cost seconds.
    cand = m.loc[m["timed"] & ~m["automated"] & m["thread_id"].notna(),
                 ["thread_id", "time_ms", "id"]]
    first = m.loc[cand.sort_values(["thread_id", "time_ms", "id"]).groupby("thread_id")
                  .head(1).index]
    return first[~first["from_internal"] & first["from_addr"].notna()]


def any_listed(lists: pd.Series, wanted: Iterable[str]) -> pd.Series:
    """For each comma-separated list in ``lists``: does it name one of ``wanted``?"""
    rows, items = split_lists(lists)
    hit = np.zeros(len(lists), dtype=bool)
    found = pc.is_in(items, value_set=pa.array(list(wanted), pa.large_string()))
    hit[rows[found.to_numpy(zero_copy_only=False)]] = True
    return pd.Series(hit, index=lists.index)


def recipients(frame: pd.DataFrame) -> pd.Series:
    """To and Cc of each message as one comma-separated list."""
    return frame["to_addrs"].fillna("") + "," + frame["cc_addrs"].fillna("")


def passes_filters(leads: pd.DataFrame, lead_from: pd.Series, config: Config) -> pd.Series:
    ok = pd.Series(True, index=leads.index)
    f = config.leads
    if f.to:
        ok &= any_listed(recipients(leads), f.to)
    if f.exclude_from:
        pattern = "|".join(fnmatch.translate(g) for g in f.exclude_from)
        ok &= ~lead_from.fillna("").str.match(pattern)
    if f.labels:
        ok &= any_listed(leads["labels"], f.labels)
    return ok


def _first_replies(
    leads: pd.DataFrame, replies: pd.DataFrame, on: str, window_ms: pd.Series | None = None
) -> pd.DataFrame:
    """Earliest reply per lead with reply time >= lead time (and within a window)."""
    pairs = leads[["lead_key", on, "lead_time_ms"]].merge(replies, on=on, how="inner")
    ok = pairs["time_ms"] >= pairs["lead_time_ms"]
    if window_ms is not None:
        ok &= pairs["time_ms"] <= pairs["lead_time_ms"] + pairs["lead_key"].map(window_ms)
    pairs = pairs[ok].sort_values(["lead_key", "time_ms", "id"])
    return pairs.groupby("lead_key").head(1).set_index("lead_key")


def _form_rule_matches(m: pd.DataFrame, rule: FormRule) -> pd.Series:
    hit = m["from_addr"].fillna("").str.match(fnmatch.translate(rule.from_glob)) & m["timed"]
    if rule.subject is not None:
        # Only the few messages from the form's sender are searched; re.search (not
        # str.contains) so a rule's capture groups do not trigger pandas warnings.
        subjects = m.loc[hit, "subject"].fillna("")
        hit.loc[hit] = subjects.map(lambda s: rule.subject.search(s) is not None).astype(bool)
    return hit


def _form_lead_address(rows: pd.DataFrame, rule: FormRule) -> pd.Series:
    if rule.header is None:
        return rows["reply_to"].fillna("").str.split(",").str[0]
    from replytime.sources.headers import parse_addresses  # email.*: only for such a rule

    name = rule.header.lower()
    raw = rows["extra"].fillna("{}").map(lambda s: _json_get(s, name))
    # Where only some rows have the header, pandas makes a string column with NaN for the rest.
    return raw.map(lambda v: (parse_addresses(v)[0] or ("",))[0] if isinstance(v, str) and v
                   else "")


def _json_get(text: str, key: str) -> str | None:
    try:
        return json.loads(text).get(key)
    except (ValueError, AttributeError):
        return None


def form_notifications(
    m: pd.DataFrame, roster: Roster, config: Config, as_of_ms: int
) -> pd.DataFrame:
    """Messages that a ``[[leads.forms]]`` rule turns into lead candidates, with their lead
    address (``lead_from``, external only) and reply window, in time order."""
    frames = []
    m = m if "timed" in m else m.assign(timed=m["time_ms"].notna())
    for rule in config.leads.forms:
        hits = m[_form_rule_matches(m, rule) & (m["time_ms"] <= as_of_ms)]
        if hits.empty:
            continue
        hits = hits.assign(lead_from=_form_lead_address(hits, rule).str.lower().to_numpy(),
                           window_ms=rule.reply_window_s * 1000)
        hits = hits[(hits["lead_from"] != "") & ~roster.is_internal(hits["lead_from"]).to_numpy()]
        frames.append(hits)
    if not frames:
        return pd.DataFrame(columns=[*m.columns, "lead_from", "window_ms"])
    return pd.concat(frames).drop_duplicates(subset=["id"]).sort_values(["time_ms", "id"])


def form_lead_threads(messages: pd.DataFrame, roster: Roster, config: Config, as_of_ms: int
                      ) -> pd.Series:
    """Whether each message's thread is one that a form lead may depend on as of ``as_of``:
    a notification's own thread, or one holding a possible first reply (a human message from
    an internal address to a lead address, docs/definitions.md, "Form leads"), whose later
    messages make the lead's later reply blocks. The leads of every other thread are its
    email leads, exactly as without form rules."""
    notes = form_notifications(messages, roster, config, as_of_ms)
    if notes.empty:
        return pd.Series(False, index=messages.index)
    # Only the columns needed: filtering every column of a million rows costs seconds.
    sent = messages[["id", "from_addr", "to_addrs", "cc_addrs"]]
    sent = sent[(messages["time_ms"].notna() & ~messages["automated"]
                 & (messages["time_ms"] <= as_of_ms)).to_numpy()]
    sent = sent[roster.is_internal(sent["from_addr"]).to_numpy()]
    rcpt = _explode_recipients(sent, ("to_addrs", "cc_addrs"))
    replying = rcpt.loc[rcpt["addr"].isin(notes["lead_from"].unique()), "id"].unique()
    threads = np.concatenate([
        notes["thread_id"].dropna().to_numpy(dtype=object),
        messages.loc[messages["id"].isin(replying), "thread_id"].dropna().to_numpy(dtype=object),
    ])
    return messages["thread_id"].isin(pd.unique(threads))


def form_history_start(
    notes: pd.DataFrame, since_ms: int, loaded_from: int | None = None
) -> tuple[int, bool]:
    """How far back form notifications must be read so that every form lead whose reply
    window reaches ``since_ms`` comes out exactly as with the whole history; and whether
    ``notes`` (read from ``loaded_from`` on, None = all history) was enough to tell.

    Whether a notification starts a lead depends on the ones before it, but never across a
    gap longer than the reply window: after such a gap a notification always starts a new
    lead. So per lead address the history starts at the last such gap before the earliest
    notification that matters (``since - window``)."""
    if notes.empty:
        return since_ms, True
    window = int(notes["window_ms"].max())
    n = notes.sort_values(["lead_from", "time_ms"])
    gap = n["time_ms"] - n.groupby("lead_from")["time_ms"].shift()
    # The first notification read for an address is a sure break only if nothing before it
    # within the window could have been missed.
    sure = gap.isna() & (loaded_from is None or (n["time_ms"] - window >= (loaded_from or 0)))
    breaks = n.loc[sure | (gap > window), ["lead_from", "time_ms"]]
    # Per address, the earliest notification whose window reaches since_ms ...
    earliest = n[n["time_ms"] >= since_ms - window].groupby("lead_from")["time_ms"].min()
    if earliest.empty:  # no notification reaches the period: nothing before it matters
        return since_ms, True
    # ... and the last sure break at or before it: the chain to replay starts there.
    breaks = breaks[breaks["time_ms"] <= breaks["lead_from"].map(earliest)]
    chain = breaks.groupby("lead_from")["time_ms"].max()
    known = len(chain) == len(earliest)
    return (int(min(chain.min(), since_ms)) if len(chain) else since_ms), known


def _form_leads(m: pd.DataFrame, roster: Roster, config: Config, as_of_ms: int) -> pd.DataFrame:
    """docs/definitions.md, "Form leads": notifications whose lead address is in Reply-To (or a
    header); the first reply is found in any thread by the lead address in To/Cc."""
    notes = form_notifications(m, roster, config, as_of_ms)
    if notes.empty:
        return pd.DataFrame()

    # Replies: human internal mail to the lead address, in any thread.
    rcpt = _explode_recipients(m, ("to_addrs", "cc_addrs"))[["id", "addr"]].drop_duplicates()
    human = m[m["timed"] & ~m["automated"] & m["from_internal"] & (m["time_ms"] <= as_of_ms)]
    replies = rcpt.merge(human[["id", "time_ms"]], on="id").rename(columns={"addr": "lead_from"})

    # Repeated notifications before the reply belong to the first: settle leads in rounds,
    # each round taking every address's earliest notification not yet accounted for.
    chosen = []
    pending = notes
    while not pending.empty:
        lead = pending.groupby("lead_from", sort=False).head(1).copy()
        lead["lead_key"] = lead["id"]
        lead["lead_time_ms"] = lead["time_ms"]
        first = _first_replies(
            lead, replies, on="lead_from", window_ms=lead.set_index("lead_key")["window_ms"]
        )
        lead["reply_id"] = lead["lead_key"].map(first["id"])
        lead["reply_time_ms"] = lead["lead_key"].map(first["time_ms"])
        chosen.append(lead)
        # A later notification starts a new lead once the previous one was answered, or
        # once the reply window of an unanswered one has passed.
        cutoff = lead.set_index("lead_from")["reply_time_ms"].fillna(
            lead.set_index("lead_from")["time_ms"] + lead.set_index("lead_from")["window_ms"]
        )
        after = pending["time_ms"] >= pending["lead_from"].map(cutoff)
        pending = pending[after & ~pending["id"].isin(lead["id"])]
    out = pd.concat(chosen)
    out["kind"] = "form"
    return out


def match_leads(messages: pd.DataFrame, config: Config, as_of_ms: int) -> pd.DataFrame:
    """One row per lead with its first reply, responder and attribution (LEAD_COLUMNS)."""
    roster = Roster(config)
    if messages.empty:
        return empty_leads()
    m = messages if "from_internal" in messages else prepare(messages, roster)
    by_id = m.set_index("id")

    forms = _form_leads(m, roster, config, as_of_ms) if config.leads.forms else pd.DataFrame()
    email = _email_leads(m, roster)
    email = email[email["time_ms"] <= as_of_ms]
    if not forms.empty:
        email = email[~email["id"].isin(forms["id"])]
    email = email.assign(lead_from=email["from_addr"], kind="email", lead_key=email["thread_id"],
                         lead_time_ms=email["time_ms"])
    email = email[passes_filters(email, email["lead_from"], config)]

    replies = m[m["timed"] & ~m["automated"] & m["from_internal"] & m["to_external"]
                & (m["time_ms"] <= as_of_ms)][["id", "thread_id", "time_ms"]]
    first = _first_replies(email, replies, on="thread_id")
    email["reply_id"] = email["lead_key"].map(first["id"])
    email["reply_time_ms"] = email["lead_key"].map(first["time_ms"])

    if not forms.empty:
        forms = forms[passes_filters(forms, forms["lead_from"], config)]
    leads = pd.concat([email, forms]) if not forms.empty else email
    leads = leads.rename(columns={"id": "lead_id"}).reset_index(drop=True)

    reply_id = leads["reply_id"].astype("Int64")
    out = lead_table(
        pd.DataFrame({
            "thread_id": leads["thread_id"],
            "kind": leads["kind"],
            "lead_id": leads["lead_id"],
            "lead_message_id": leads["message_id"],
            "lead_from": leads["lead_from"],
            "lead_time_ms": leads["time_ms"],
            "reply_id": reply_id,
            "reply_message_id": reply_id.map(by_id["message_id"]),
            "reply_from": reply_id.map(by_id["from_addr"]),
            "reply_time_ms": leads["reply_time_ms"],
        }),
        by_id.loc[leads["lead_id"]].reset_index(),
        roster,
    )
    return out.sort_values(["lead_time_ms", "lead_id"]).reset_index(drop=True)


def empty_leads() -> pd.DataFrame:
    """No leads, typed as ``lead_table`` types them: reports filter on ``answered``, and an
    empty object column there would select columns instead of rows."""
    return pd.DataFrame(columns=LEAD_COLUMNS).astype({
        "lead_id": "int64", "lead_time_ms": "int64", "answered": bool, "reply_id": "Int64",
        "reply_time_ms": "Int64", "response_s": "float64", "clamped": bool})


def lead_table(found: pd.DataFrame, lead_messages: pd.DataFrame, roster: Roster
               ) -> pd.DataFrame:
    """LEAD_COLUMNS from the leads and first replies found (here in pandas, or in the
    database by ``store.pairing``): attribution and the response time
    (docs/definitions.md, "Reps and attribution", "Response time"). ``found`` has
    thread_id, kind, lead_id, lead_message_id, lead_from, lead_time_ms and the reply's id,
    message_id, from and time (null when unanswered); ``lead_messages`` the lead messages'
    id, to_addrs and cc_addrs."""
    out = found.copy()
    out["lead_id"] = out["lead_id"].astype("int64")
    out["lead_time_ms"] = out["lead_time_ms"].astype("int64")
    out["addressed_rep"] = out["lead_id"].map(addressed_rep(lead_messages, roster))
    out["answered"] = out["reply_id"].notna()
    out["reply_id"] = out["reply_id"].astype("Int64")
    out["reply_time_ms"] = out["reply_time_ms"].astype("Int64")
    # object columns with None for unanswered leads
    for column in ("reply_message_id", "reply_from"):
        out[column] = out[column].astype(object).where(out["answered"], None)
    out["responder"] = roster.rep_name(out["reply_from"]).where(out["answered"], None)
    rep = np.where(out["responder"].notna(), out["responder"], out["addressed_rep"])
    out["rep"] = pd.Series(rep, index=out.index, dtype=object).fillna(UNASSIGNED)
    delta = (out["reply_time_ms"] - out["lead_time_ms"]).astype("float64") / 1000.0
    out["clamped"] = delta < 0
    out["response_s"] = delta.clip(lower=0)
    return out[LEAD_COLUMNS]

