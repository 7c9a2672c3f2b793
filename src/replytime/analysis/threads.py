"""Group cached messages into threads (docs/definitions.md, "Threads").

1. The provider's thread id where there is one (Gmail threadId, IMAP/Takeout X-GM-THRID).
2. Otherwise Message-ID / In-Reply-To / References, JWZ-style: a referenced message that is
   not in the cache is a placeholder node that still joins everything referencing it. We
   only need thread *membership*, not the tree, so this is a connected-components problem;
   loops and duplicate ids cannot hurt it.
3. Otherwise a thread whose first message carries no threading headers joins an earlier
   thread with the same normalised subject that shares an external participant and was
   active within the last 14 days. Participants are people: the From, To, Cc and Reply-To
   of non-automated messages only (docs/definitions.md). A bounce daemon, an auto-reply
   robot or a list server appears in many unrelated threads and must never link them.

``group_threads`` also says how each thread was grouped (``RULES``) and, for subject-rule
joins, which thread each component was joined to through which address (for ``explain``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from replytime.lists import arrow_strings, concat_chunks, split_lists, to_series

SUBJECT_WINDOW_MS = 14 * 86400 * 1000
#: How a thread was grouped, strongest first: a provider thread id on any member; the
#: subject rule joined two or more reference components; Message-ID / In-Reply-To /
#: References joined several messages; one message, nothing joined.
RULES = ("provider", "subject", "headers", "single")
LINK_COLUMNS = ["thread_id", "joined_key", "to_key", "address"]
_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|fw|fwd|aw|sv|wg|vs|antw|rif|tr)\s*(?:\[\d+\])?\s*[:：]\s*|\[[^\]]*\]\s*)+",
    re.I,
)


def normalise_subject(subject: pd.Series) -> pd.Series:
    """Lower-case subject without reply/forward prefixes, list tags or extra spaces."""
    # Each distinct subject once: threads repeat subjects, and the regexes run per string.
    codes, distinct = pd.factorize(subject.fillna("").astype(str))
    s = np.array([_normalise(x) for x in distinct], dtype=object)
    return pd.Series(s[codes], index=subject.index, dtype=object)


def _normalise(subject: str) -> str:
    r"""_PREFIX_RE.sub("", s), then re.sub(r"\s+", " ", ...).strip().lower(), at half the cost:
    the prefix pattern is anchored, so it matches once at most, and str.split() splits on
    exactly the whitespace \s matches (both use Py_UNICODE_ISSPACE)."""
    prefix = _PREFIX_RE.match(subject)
    if prefix:
        subject = subject[prefix.end() :]
    return " ".join(subject.split()).lower()


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


def _reference_components(
    df: pd.DataFrame, has_provider: np.ndarray, keys: pa.Array | pa.ChunkedArray
) -> tuple[np.ndarray, Placeholders]:
    """Connected component of each message over its edges: to its provider thread, or (no
    provider id) to every Message-ID in In-Reply-To and References. Built with Arrow
    compute, so a million messages cost Arrow buffers, not a Python string per reference.
    ``keys`` is the msg_key column as Arrow strings. Also the references to Message-IDs no
    message of ``df`` has (placeholders)."""
    n = len(df)
    rows = pa.array(np.arange(n, dtype=np.int64))
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
    encoded = pc.dictionary_encode(labels).combine_chunks()
    codes = encoded.indices.to_numpy()
    size = int(codes.max()) + 1 if len(codes) else 0
    self_codes = codes[:n]
    # A reference (after the provider labels) to a label no message has: a placeholder.
    target = codes[n:]
    held = np.zeros(size, dtype=bool)
    held[self_codes] = True
    missing = np.flatnonzero(~held[target])
    missing = missing[missing >= len(prov_rows)]
    placeholders = (edge_src[missing], encoded.dictionary.take(pa.array(target[missing])))
    return connected(size, self_codes[edge_src], target)[self_codes], placeholders


def _heads(comp: np.ndarray, place: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label, earliest row) of every component, labels ascending: the row of least place."""
    n = len(place)
    least = np.full(int(comp.max()) + 1, n, dtype=np.int64)
    np.minimum.at(least, comp, place)
    labels = np.flatnonzero(least < n)
    return labels, order[least[labels]]


#: (row, Message-ID) of each reference to a Message-ID no message has
Placeholders = tuple[np.ndarray, pa.Array]


@dataclass(frozen=True)
class Threading:
    """A thread assignment and how it came about.

    ``thread_id``: thread id per message, indexed like ``df["id"]``. ``rule``: one of
    ``RULES`` per thread, indexed by thread id. ``links``: one row per reference component
    the subject rule joined to an earlier one (``LINK_COLUMNS``): the thread it ended in,
    the key of the component's earliest message, the key of the earliest message of the
    component it was joined to, and the participant address they share. ``member``: per
    message, its thread's position in ``rule``; ``heads``: per thread (``rule`` order), the
    row of its earliest message; ``placeholders``: references to Message-IDs no message
    has (for analysis/rethread.py)."""

    thread_id: pd.Series
    rule: pd.Series
    links: pd.DataFrame
    member: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    heads: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    placeholders: Placeholders = field(
        default_factory=lambda: (np.zeros(0, np.int64), pa.array([], pa.large_string())))


def assign_threads(
    df: pd.DataFrame, is_internal: Callable[[pd.Series], pd.Series] | None = None
) -> pd.Series:
    """Thread id per message (indexed like ``df["id"]``): ``group_threads(...).thread_id``."""
    return group_threads(df, is_internal).thread_id


def group_threads(
    df: pd.DataFrame, is_internal: Callable[[pd.Series], pd.Series] | None = None
) -> Threading:
    """Threads of the messages of ``df``, with the rule that grouped each.

    ``df`` has columns id, msg_key, in_reply_to, refs, provider_thread_id,
    subject, from_addr, to_addrs, cc_addrs, time_ms, and optionally automated and reply_to
    (absent: no message is automated, no Reply-To). ``is_internal`` maps a Series of
    addresses to booleans, each on its own (it is asked about the few addresses that matter
    only); it decides which participants count for the subject rule.
    """
    if df.empty:
        return Threading(
            pd.Series([], dtype=object, index=pd.Index([], name="id")),
            pd.Series([], dtype=object),
            pd.DataFrame({c: pd.Series([], dtype="str") for c in LINK_COLUMNS}),
        )
    n = len(df)
    has_provider = df["provider_thread_id"].notna().to_numpy()
    keys = arrow_strings(df["msg_key"])  # once: components, order and names all use it
    ref_comp, placeholders = _reference_components(df, has_provider, keys)

    # Every "earliest message" below is the least (time, key), time missing (NaN) last: each
    # row's place in that order, so a group's earliest row is its least place (an integer
    # min). Arrow's stable two-key sort only compares keys where times tie: far cheaper than
    # ranking every key and lexsorting (same order, NaN and ties included).
    time_ms = df["time_ms"].to_numpy(dtype="float64")
    by_time_key = pa.table({"time": pa.array(time_ms), "key": keys})
    order = pc.sort_indices(
        by_time_key, sort_keys=[("time", "ascending"), ("key", "ascending")]
    ).to_numpy()
    place = np.empty(n, dtype=np.int64)
    place[order] = np.arange(n)
    comp, joins = _merge_by_subject(
        df, ref_comp, time_ms, place, order, has_provider, is_internal
    )

    # Name each thread: the provider's id if it has one, else its earliest message's key.
    # ``name`` is indexed by component label.
    labels, heads = _heads(comp, place, order)
    size = int(comp.max()) + 1
    name = np.empty(size, dtype=object)
    name[labels] = pc.take(keys, pa.array(heads)).to_numpy(zero_copy_only=False)
    provider = np.zeros(size, dtype=bool)
    if has_provider.any():
        provider_labels, provider_names = _provider_names(df, comp, has_provider)
        name[provider_labels] = provider_names
        provider[provider_labels] = True
    # Only subject-rule edges join reference components, so a thread holds two or more of
    # them exactly when one of its components was joined.
    subject = np.zeros(size, dtype=bool)
    subject[comp[joins[0]]] = True
    # An index into RULES per thread (strongest rule last written wins); small integers,
    # not strings over every node: placeholders make the node count several times n.
    code = np.full(len(labels), RULES.index("single"), dtype=np.int8)
    code[np.bincount(comp, minlength=size)[labels] > 1] = RULES.index("headers")
    code[subject[labels]] = RULES.index("subject")
    code[provider[labels]] = RULES.index("provider")
    rule = np.array(RULES, dtype=object)[code]
    # Links as Arrow-backed strings: without a roster (everyone external) they can be
    # tens of thousands, and a Python string per value would outweigh the rest.
    links = pa.table({
        "thread_id": pa.array(name[comp[joins[0]]], pa.large_string()),
        "joined_key": pc.take(keys, pa.array(joins[0])),
        "to_key": pc.take(keys, pa.array(joins[1])),
        "address": joins[2],
    })
    links = links.take(pc.sort_indices(links, sort_keys=[("thread_id", "ascending"),
                                                         ("joined_key", "ascending")]))
    return Threading(
        pd.Series(name[comp], index=df["id"].to_numpy()),
        pd.Series(rule, index=name[labels]),
        pd.DataFrame({c: to_series(links[c].combine_chunks()) for c in LINK_COLUMNS}),
        np.searchsorted(labels, comp), heads, placeholders,
    )


def _run_starts(values: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts (for sorted values: first of each distinct)."""
    starts = np.ones(len(values), dtype=bool)
    starts[1:] = values[1:] != values[:-1]
    return starts


def _provider_names(
    df: pd.DataFrame, comp: np.ndarray, has_provider: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(label, least provider thread id) of each component with provider ids. Arrow orders
    strings by code point, as Python does."""
    rows = np.flatnonzero(has_provider)
    prov = arrow_strings(df["provider_thread_id"].iloc[rows])
    by_comp = pa.table({"comp": comp[rows], "prov": prov})
    keys = [("comp", "ascending"), ("prov", "ascending")]
    first = pc.sort_indices(by_comp, sort_keys=keys).to_numpy()
    c = comp[rows][first]
    lead = first[_run_starts(c)]  # least id of each component
    return comp[rows][lead], pc.take(prov, pa.array(lead)).to_numpy(zero_copy_only=False)


# The participant columns of the subject rule; Reply-To is optional in the input frame.
_PARTICIPANT_LISTS = ("to_addrs", "cc_addrs", "reply_to")


def _address_pairs(df: pd.DataFrame, rows: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    """(index into ``rows``, address) for every non-empty From, To, Cc and Reply-To address
    of ``df``'s rows at positions ``rows``."""
    positions = [np.arange(len(rows))]
    parts = [arrow_strings(df["from_addr"].iloc[rows])]  # one address: never split
    for column in _PARTICIPANT_LISTS:
        if column not in df:
            continue
        r, items = split_lists(df[column].iloc[rows])
        positions.append(r)
        parts.append(items)
    addrs = concat_chunks(parts, pa.large_string()).combine_chunks()
    keep = pc.fill_null(pc.not_equal(addrs, ""), False)  # a null or empty From
    return np.concatenate(positions)[keep.to_numpy(zero_copy_only=False)], addrs.filter(keep)


#: (head row of each joined component, head row of the component it joined, address)
Joins = tuple[np.ndarray, np.ndarray, pa.Array]
_NO_JOINS: Joins = (np.zeros(0, np.int64), np.zeros(0, np.int64), pa.array([], pa.large_string()))


def _merge_by_subject(
    df: pd.DataFrame,
    comp: np.ndarray,
    time_ms: np.ndarray,
    place: np.ndarray,
    order: np.ndarray,
    has_provider: np.ndarray,
    is_internal: Callable[[pd.Series], pd.Series] | None,
) -> tuple[np.ndarray, Joins]:
    """Rule 3: a thread whose first message has no threading headers joins the previous
    thread with the same normalised subject and a shared external participant, when that
    thread's last human message is at most 14 days older. Vectorised: one candidate edge
    per (subject, participant) neighbour pair, then connected components over threads.

    Participants and activity come from non-automated messages only: a robot's message
    (a bounce, an auto-reply, a list post) neither links two threads nor keeps one open,
    so adding or removing robots' mail never regroups people's threads.

    Works on numpy arrays, narrowing to the candidate threads before touching addresses:
    components are "threads" below, each with its head (earliest) row. Returns the new
    components and, per joined component, the edge kept to explain it."""
    labels, heads = _heads(comp, place, order)
    dated = ~np.isnan(time_ms[heads])  # a thread with no dated message has no head
    labels, heads = labels[dated], heads[dated]
    if not len(heads):
        return comp, _NO_JOINS
    # Candidates: threads whose head's subject (not empty) is also some other head's, and
    # among those heads is at least one with no threading headers.
    subj, subjects = pd.factorize(normalise_subject(df["subject"].iloc[heads]).to_numpy())
    shared = (np.bincount(subj, minlength=len(subjects)) > 1) & (subjects != "")
    no_headers = (
        ~has_provider[heads]
        & df["in_reply_to"].iloc[heads].isna().to_numpy()
        & (df["refs"].iloc[heads].fillna("") == "").to_numpy()
    )
    wanted = np.zeros(len(subjects), dtype=bool)
    wanted[subj[no_headers & shared[subj]]] = True
    cand = wanted[subj]
    if not cand.any():
        return comp, _NO_JOINS
    labels, subj, no_headers = labels[cand], subj[cand], no_headers[cand]
    heads = heads[cand]
    start = time_ms[heads]

    # Number the candidate threads in (subject, start, label) order: each subject's threads
    # are then a run of numbers in the order they follow each other within a (subject,
    # address) group, so sorting pairs by (address, number) lays out every group in order.
    by_subject = np.lexsort((labels, start, subj))
    labels, subj, heads = labels[by_subject], subj[by_subject], heads[by_subject]
    no_headers, start = no_headers[by_subject], start[by_subject]
    thread_of = np.full(int(comp.max()) + 1, -1, dtype=np.int64)
    thread_of[labels] = np.arange(len(labels))
    rows = np.flatnonzero(thread_of[comp] >= 0)  # the candidate threads' messages
    if "automated" in df:
        rows = rows[~df["automated"].to_numpy(dtype=bool)[rows]]  # people's messages only
    thread = thread_of[comp[rows]]
    last = np.full(len(labels), -np.inf)
    np.fmax.at(last, thread, time_ms[rows])  # latest dated message (fmax skips NaN)

    # (address, thread) pairs, deduplicated and ordered by one integer sort (np.unique is
    # several times slower: it hashes before sorting).
    at, addrs = _address_pairs(df, rows)
    encoded = pc.dictionary_encode(addrs)
    pairs = np.sort(encoded.indices.to_numpy().astype(np.int64) * len(labels) + thread[at])
    pairs = pairs[_run_starts(pairs)]
    addr, thread = np.divmod(pairs, len(labels))
    # Each pair after the first of its (subject, address) group, and the pair before it.
    later = np.flatnonzero((addr[1:] == addr[:-1]) & (subj[thread[1:]] == subj[thread[:-1]])) + 1
    t, prev, addr = thread[later], thread[later - 1], addr[later]
    ok = no_headers[t] & (start[t] - last[prev] <= SUBJECT_WINDOW_MS)
    t, prev, addr = t[ok], prev[ok], addr[ok]
    if not len(t):
        return comp, _NO_JOINS
    asked = np.unique(addr)
    asked_text = pc.take(encoded.dictionary, pa.array(asked))
    if is_internal is not None:
        # Internal participants don't count: their groups' edges go. Only the few addresses
        # of edges found are asked about, not every address in play.
        values = asked_text.to_numpy(zero_copy_only=False)
        internal = is_internal(pd.Series(values, dtype=object)).to_numpy(dtype=bool)
        external = ~internal[np.searchsorted(asked, addr)]
        t, prev, addr = t[external], prev[external], addr[external]
        if not len(t):
            return comp, _NO_JOINS
    # One edge per joined thread explains it: to the nearest earlier thread, through the
    # least address in code-point order (Arrow orders UTF-8 bytes: the same), so every
    # backend's frame gives the same. Integer sorts only.
    at_asked = np.searchsorted(asked, addr)
    text_rank = np.empty(len(asked), dtype=np.int64)
    text_rank[pc.sort_indices(asked_text).to_numpy()] = np.arange(len(asked))
    best = np.lexsort((text_rank[at_asked], -prev, t))
    best = best[_run_starts(t[best])]
    joins: Joins = (heads[t[best]], heads[prev[best]],
                    pc.take(asked_text, pa.array(at_asked[best])))
    return connected(int(comp.max()) + 1, labels[t], labels[prev])[comp], joins
