"""String columns through Arrow: the comma-separated address lists of the cache, split without
making a Python string per item. At a million messages pandas' ``str.split().explode()``
costs seconds per column; Arrow's split and flatten cost milliseconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def arrow_strings(values: pd.Series) -> pa.Array | pa.ChunkedArray:
    """A column as Arrow large strings, nulls kept (zero-copy for Arrow-backed columns)."""
    if values.dtype == object:
        return pa.array(values.where(values.notna(), None), type=pa.large_string())
    return pa.array(values, type=pa.large_string())


def concat_chunks(parts: list[pa.Array | pa.ChunkedArray], kind: pa.DataType) -> pa.ChunkedArray:
    """One chunked array of ``parts``' chunks. (Handing ChunkedArrays to
    ``pa.chunked_array`` converts them element by element: seconds at a million rows.)"""
    chunks = [c for p in parts for c in (p.chunks if isinstance(p, pa.ChunkedArray) else [p])]
    return pa.chunked_array(chunks, type=kind)


def split_lists(values: pd.Series, sep: str = ",") -> tuple[np.ndarray, pa.Array]:
    """(row position, item) for every non-empty item of every list in ``values``, rows in
    order and items in list order. Null lists have no items."""
    lists = pc.split_pattern(pc.fill_null(arrow_strings(values), ""), sep)
    items = concat_chunks([pc.list_flatten(lists)], pa.large_string()).combine_chunks()
    rows = concat_chunks([pc.list_parent_indices(lists)], pa.int64()).to_numpy()
    keep = pc.not_equal(items, "").to_numpy(zero_copy_only=False)
    return rows[keep], items.filter(pa.array(keep))


def to_series(values: pa.Array) -> pd.Series:
    """Arrow strings as a pandas string Series (no Python object per value)."""
    return pd.Series(values.to_pandas(), dtype="str") if len(values) else pd.Series([], dtype="str")
