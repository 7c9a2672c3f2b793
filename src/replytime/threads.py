"""Group cached messages into threads (brief, section 2, "Threads").

1. The provider's thread id where there is one (Gmail threadId, IMAP/Takeout X-GM-THRID).
2. Otherwise Message-ID / In-Reply-To / References, JWZ-style: a referenced message that is
   not in the cache is a placeholder node that still joins everything referencing it. We
   only need thread *membership*, not the tree, so this is a connected-components problem;
   loops and duplicate ids cannot hurt it.
3. Otherwise a thread whose first message carries no threading headers joins an earlier
   thread with the same normalised subject that shares an external participant and was
   active within the last 14 days.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from replytime.lists import arrow_strings, concat_chunks, split_lists

SUBJECT_WINDOW_MS = 14 * 86400 * 1000
_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|fw|fwd|aw|sv|wg|vs|antw|rif|tr)\s*(?:\[\d+\])?\s*[:：]\s*|\[[^\]]*\]\s*)+",
    re.I,
)
_SPACE_RE = re.compile(r"\s+")


def normalise_subject(subject: pd.Series) -> pd.Series:
    """Lower-case subject without reply/forward prefixes, list tags or extra spaces."""
    # Each distinct subject once: threads repeat subjects, and the regexes run per string.
    codes, distinct = pd.factorize(subject.fillna("").astype(str))
    s = pd.Series(distinct, dtype=object).str.replace(_PREFIX_RE, "", regex=True)
    s = s.str.replace(_SPACE_RE, " ", regex=True).str.strip().str.lower()
    return pd.Series(s.to_numpy(dtype=object)[codes], index=subject.index, dtype=object)


def connected(size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the undirected graph on nodes 0..size-1 with edges a[i]-b[i]:
    each node's label is the smallest node of its component (so labels keep node order).

    Vectorised union-find: every round hooks each edge's larger root under the smaller one,
    then halves paths until every node points at its root. Each round at least halves the
    number of roots in a component, so a References chain 20,000 long takes ~15 rounds.
    (scipy's csgraph does the same in C, but importing it costs 0.2 s of every import.)"""
    parent = np.arange(size, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        ra, rb = ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
        a, b = a[differ], b[differ]


def _reference_components(df: pd.DataFrame, has_provider: np.ndarray) -> np.ndarray:
    """Connected component of each message over its edges: to its provider thread, or (no
    provider id) to every Message-ID in In-Reply-To and References. Built with Arrow
    compute, so a million messages cost Arrow buffers, not a Python string per reference."""
    n = len(df)
    rows = pa.array(np.arange(n, dtype=np.int64))
    keys = arrow_strings(df["msg_key"])
    plain = pa.array(~has_provider)
    prov_rows = pc.filter(rows, pa.array(has_provider))
    text = pa.large_string()
    prov_labels = pc.binary_join_element_wise(
        pa.scalar("\x00thr:", text),
        pc.filter(arrow_strings(df["provider_thread_id"]), pa.array(has_provider)),
        pa.scalar("", text),
    )
    irt = arrow_strings(df["in_reply_to"])
    irt_ok = pc.and_(plain, pc.is_valid(irt))
    refs = pc.split_pattern(pc.fill_null(arrow_strings(df["refs"]), ""), " ")
    flat = pc.list_flatten(refs)
    parent = pc.take(rows, pc.list_parent_indices(refs))
    ref_ok = pc.and_(pc.take(plain, pc.list_parent_indices(refs)), pc.not_equal(flat, ""))
    edge_src = concat_chunks(
        [prov_rows, pc.filter(rows, irt_ok), pc.filter(parent, ref_ok)], pa.int64()
    ).to_numpy()
    labels = concat_chunks(
        [keys, prov_labels, pc.filter(irt, irt_ok), pc.filter(flat, ref_ok)], text
    )
    codes = pc.dictionary_encode(labels).combine_chunks().indices.to_numpy()
    size = int(codes.max()) + 1 if len(codes) else 0
    self_codes = codes[:n]
    return connected(size, self_codes[edge_src], codes[n:])[self_codes]


def assign_threads(
    df: pd.DataFrame, is_internal: Callable[[pd.Series], pd.Series] | None = None
) -> pd.Series:
    """Thread id per message (indexed like ``df["id"]``).

    ``df`` has columns id, msg_key, in_reply_to, refs, provider_thread_id,
    subject, from_addr, to_addrs, cc_addrs, time_ms. ``is_internal`` maps a Series of
    addresses to booleans; it decides which participants count for the subject rule.
    """
    if df.empty:
        return pd.Series([], dtype=object, index=pd.Index([], name="id"))
    has_provider = df["provider_thread_id"].notna().to_numpy()
    comp = _reference_components(df, has_provider)
    node_self = df["msg_key"].astype(str).to_numpy()
    prov = df["provider_thread_id"].to_numpy()

    # Every "earliest message" below is the least (time, key), time missing last: each row's
    # place in that order, so a group's earliest row is its least place (an integer min,
    # where sorting by the string key cost seconds at a million rows).
    time_ms = df["time_ms"].to_numpy(dtype="float64")
    key_rank = pc.rank(arrow_strings(df["msg_key"]), sort_keys="ascending").to_numpy()
    order = np.lexsort((key_rank, time_ms))
    place = np.empty(len(df), dtype=np.int64)
    place[order] = np.arange(len(df))

    work = pd.DataFrame(
        {
            "comp": comp,
            "time": time_ms,
            "place": place,
            "no_headers": (~has_provider)
            & df["in_reply_to"].isna().to_numpy()
            & (df["refs"].fillna("") == "").to_numpy(),
            "provider": prov,
        },
    )
    comp = _merge_by_subject(df, work, order, is_internal)

    # Name each thread: the provider's id if it has one, else its earliest message's key.
    first_row = order[pd.Series(place).groupby(comp).min()]
    names = pd.Series(node_self[first_row], index=np.unique(comp))
    provider_name = work.dropna(subset=["provider"]).groupby(comp[has_provider])["provider"].min()
    names.loc[provider_name.index] = provider_name
    return pd.Series(names.reindex(comp).to_numpy(), index=df["id"].to_numpy())


def _address_pairs(members: pd.DataFrame) -> tuple[np.ndarray, pa.Array]:
    """(row position in ``members``, address) for every From, To and Cc address."""
    sender = arrow_strings(members["from_addr"])
    rows, parts = [np.arange(len(members))], [sender]  # one address: never split
    for column in ("to_addrs", "cc_addrs"):
        r, items = split_lists(members[column])
        rows.append(r)
        parts.append(items)
    return np.concatenate(rows), concat_chunks(parts, pa.large_string()).combine_chunks()


def _merge_by_subject(
    df: pd.DataFrame,
    work: pd.DataFrame,
    order: np.ndarray,
    is_internal: Callable[[pd.Series], pd.Series] | None,
) -> np.ndarray:
    """Rule 3: a thread whose first message has no threading headers joins the previous
    thread with the same normalised subject and a shared external participant, when that
    thread's last message is at most 14 days older. Vectorised: one candidate edge per
    (subject, participant) neighbour pair, then connected components over threads."""
    comp = work["comp"].to_numpy()
    heads = order[work["place"].groupby(comp).min().to_numpy()]
    first = work.iloc[heads]
    first = first[first["time"].notna()]  # a thread with no dated message has no head
    if first.empty:
        return comp
    first = first.assign(subject=normalise_subject(df["subject"].iloc[first.index]).to_numpy())
    first = first[(first["subject"] != "") & first["subject"].duplicated(keep=False)]
    if not first["no_headers"].any():
        return comp
    wanted = set(first.loc[first["no_headers"], "subject"])
    first = first[first["subject"].isin(wanted)].set_index("comp")

    in_play = work["comp"].isin(first.index).to_numpy()
    members = df.loc[in_play]
    member_comp = comp[in_play]
    rows, addrs = _address_pairs(members)
    # Distinct addresses only are looked at (few, even in a large cache); rows keep codes.
    encoded = pc.dictionary_encode(addrs)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    distinct = pd.Series(encoded.dictionary.to_numpy(zero_copy_only=False), dtype=object)
    keep = (distinct.notna() & (distinct != "")).to_numpy(dtype=bool, copy=True)
    if is_internal is not None:
        keep &= ~is_internal(distinct).to_numpy(dtype=bool)
    ok_row = keep[codes] & pc.is_valid(addrs).to_numpy(zero_copy_only=False)
    pairs = pd.DataFrame({"comp": member_comp[rows[ok_row]], "addr": codes[ok_row]})
    pairs = pairs.drop_duplicates()
    last_time = pd.Series(work["time"].to_numpy()[in_play]).groupby(member_comp).max()
    pairs = pairs.join(first[["subject", "time", "no_headers"]], on="comp")
    pairs["last"] = pairs["comp"].map(last_time)
    pairs = pairs.sort_values(["subject", "addr", "time", "comp"])
    g = pairs.groupby(["subject", "addr"], sort=False)
    prev_comp = g["comp"].shift()
    prev_last = g["last"].shift()
    ok = (
        pairs["no_headers"].to_numpy()
        & prev_comp.notna().to_numpy()
        & ((pairs["time"] - prev_last) <= SUBJECT_WINDOW_MS).to_numpy()
    )
    if not ok.any():
        return comp
    a = pairs["comp"].to_numpy()[ok]
    b = prev_comp.to_numpy()[ok].astype(a.dtype)
    size = int(comp.max()) + 1
    return connected(size, a, b)[comp]
