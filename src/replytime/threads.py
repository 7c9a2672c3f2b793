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
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

SUBJECT_WINDOW_MS = 14 * 86400 * 1000
_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|fw|fwd|aw|sv|wg|vs|antw|rif|tr)\s*(?:\[\d+\])?\s*[:：]\s*|\[[^\]]*\]\s*)+",
    re.I,
)
_SPACE_RE = re.compile(r"\s+")


def normalise_subject(subject: pd.Series) -> pd.Series:
    """Lower-case subject without reply/forward prefixes, list tags or extra spaces."""
    s = subject.fillna("").astype(str)
    s = s.str.replace(_PREFIX_RE, "", regex=True)
    return s.str.replace(_SPACE_RE, " ", regex=True).str.strip().str.lower()


def _split_column(values: pd.Series, sep: str | None) -> pd.Series:
    return values.fillna("").astype(str).str.split(sep).explode()


def assign_threads(
    df: pd.DataFrame, is_internal: Callable[[pd.Series], pd.Series] | None = None
) -> pd.Series:
    """Thread id per message (indexed like ``df["id"]``).

    ``df`` has columns id, msg_key, message_id, in_reply_to, refs, provider_thread_id,
    subject, from_addr, to_addrs, cc_addrs, time_ms. ``is_internal`` maps a Series of
    addresses to booleans; it decides which participants count for the subject rule.
    """
    if df.empty:
        return pd.Series([], dtype=object, index=pd.Index([], name="id"))
    n = len(df)
    node_self = df["msg_key"].astype(str).to_numpy()
    has_provider = df["provider_thread_id"].notna().to_numpy()

    # Edges: message -> provider thread; messages without one -> their parents.
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    rows = np.arange(n)
    prov = df["provider_thread_id"].to_numpy()
    src.append(rows[has_provider])
    dst.append(np.char.add("\x00thr:", prov[has_provider].astype(str)))
    plain = df.loc[~has_provider]
    parents = pd.concat(
        [
            plain["in_reply_to"].dropna(),
            _split_column(plain["refs"], None).replace("", np.nan).dropna(),
        ]
    )
    # Positional row numbers of the referencing messages.
    pos = pd.Series(rows, index=df.index)
    src.append(pos.loc[parents.index].to_numpy())
    dst.append(parents.astype(str).to_numpy())

    edge_src = np.concatenate(src)
    edge_dst_labels = np.concatenate(dst) if dst else np.array([], dtype=object)
    labels, uniques = pd.factorize(pd.Index(np.concatenate([node_self, edge_dst_labels])))
    self_codes = labels[:n]
    dst_codes = labels[n:]
    src_codes = self_codes[edge_src]
    size = len(uniques)
    graph = coo_matrix(
        (np.ones(len(src_codes), dtype=np.int8), (src_codes, dst_codes)), shape=(size, size)
    )
    _, comp_of_node = connected_components(graph, directed=False)
    comp = comp_of_node[self_codes]

    work = pd.DataFrame(
        {
            "comp": comp,
            "time": df["time_ms"].to_numpy(dtype="float64"),
            "key": node_self,
            "no_headers": (~has_provider)
            & df["in_reply_to"].isna().to_numpy()
            & (df["refs"].fillna("") == "").to_numpy(),
            "provider": prov,
        },
        index=df.index,
    )
    comp = _merge_by_subject(df, work, is_internal)
    work["comp"] = comp

    # Name each thread: the provider's id if it has one, else its earliest message's key.
    ordered = work.sort_values(["comp", "time", "key"], na_position="last")
    first_key = ordered.groupby("comp", sort=False)["key"].first()
    provider_name = work.dropna(subset=["provider"]).groupby("comp")["provider"].min()
    names = first_key.copy()
    names.loc[provider_name.index] = provider_name
    return pd.Series(names.reindex(work["comp"]).to_numpy(), index=df["id"].to_numpy())


def _merge_by_subject(
    df: pd.DataFrame,
    work: pd.DataFrame,
    is_internal: Callable[[pd.Series], pd.Series] | None,
) -> np.ndarray:
    """Rule 3: a thread whose first message has no threading headers joins the previous
    thread with the same normalised subject and a shared external participant, when that
    thread's last message is at most 14 days older. Vectorised: one candidate edge per
    (subject, participant) neighbour pair, then connected components over threads."""
    comp = work["comp"].to_numpy()
    timed = work.dropna(subset=["time"])
    if timed.empty:
        return comp
    first = timed.sort_values(["comp", "time", "key"]).groupby("comp").head(1)
    first = first.assign(subject=normalise_subject(df.loc[first.index, "subject"]).to_numpy())
    first = first[(first["subject"] != "") & first["subject"].duplicated(keep=False)]
    if not first["no_headers"].any():
        return comp
    wanted = set(first.loc[first["no_headers"], "subject"])
    first = first[first["subject"].isin(wanted)].set_index("comp")

    members = df.loc[work["comp"].isin(first.index)]
    addrs = pd.concat(
        [
            members["from_addr"],
            _split_column(members["to_addrs"], ","),
            _split_column(members["cc_addrs"], ","),
        ]
    )
    addrs = addrs[addrs.notna() & (addrs != "")]
    if is_internal is not None:
        addrs = addrs[~is_internal(addrs).to_numpy()]
    last_time = work.loc[members.index].groupby("comp")["time"].max()
    pairs = pd.DataFrame(
        {"comp": work.loc[addrs.index, "comp"].to_numpy(), "addr": addrs.to_numpy()}
    ).drop_duplicates()
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
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(size, size))
    _, merged = connected_components(graph, directed=False)
    return merged[comp]
