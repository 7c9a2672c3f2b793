"""Output: machine formats (csv, json, jsonl, parquet) with the stable columns of
docs/definitions.md, and human ones (terminal table, markdown). Nothing here fetches or
computes metrics."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from replytime.errors import UsageError
from replytime.periods import format_duration

if TYPE_CHECKING:
    from rich.table import Table

FORMATS = ("table", "csv", "json", "jsonl", "markdown", "parquet", "html")
RATE_COLUMNS = ("reply_rate", "within_sla", "share", "a_within_sla", "b_within_sla", "lead_share")
_CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# What the human formats say where a report has nothing to show (docs/definitions.md,
# "Output formats"); machine formats stay bare: a header row, [] or an empty Parquet file.
NO_LEADS = "no leads in this period"
NO_UNANSWERED = "no unanswered leads in this period"
_COUNT_COLUMN = {"reps": "leads", "volume": "leads", "sla": "leads", "threads": "threads"}


def empty_note(kind: str, df: pd.DataFrame) -> str | None:
    """The one-line note for a report of ``kind`` whose frame holds no lead, else None."""
    if kind == "compare":
        return None if (df["a_leads"].sum() + df["b_leads"].sum()) else "no leads in either period"
    if kind in _COUNT_COLUMN:
        rows = df[df[df.columns[0]] != "TOTAL"] if kind == "reps" else df
        return None if rows[_COUNT_COLUMN[kind]].sum() else NO_LEADS
    if len(df):
        return None
    return NO_UNANSWERED if kind == "unanswered" else NO_LEADS


#: the epoch milliseconds pandas' datetime64[ns] holds (1677-09-22 to 2262-04-11); ``iso_utc``
#: leaves those outside to pandas, which raises as it always did
_NS_BOUNDS_MS = (-9_223_372_036_854, 9_223_372_036_853)


def iso_utc(ms: pd.Series) -> pd.Series:
    """Epoch milliseconds -> ``2026-11-02T14:05:00+00:00`` (None stays empty)."""
    values = pd.to_numeric(ms, errors="coerce")
    fast = _iso_seconds(values)
    if fast is not None:
        return fast
    dt = pd.to_datetime(values, unit="ms", utc=True)
    out = dt.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return out.where(values.notna(), None)


def _iso_seconds(values: pd.Series) -> pd.Series | None:
    """``iso_utc`` of numeric ``values`` by numpy's datetime64 formatting (one C pass, not
    pandas' strftime per value), when every value is a whole millisecond within
    ``_NS_BOUNDS_MS``; else None. The same strings: whole seconds, rounded down."""
    if values.dtype.kind not in "iuf":
        return None
    present = values.notna().to_numpy()
    found = values.to_numpy(dtype="float64", na_value=np.nan)[present]
    if len(found) and not (
        found.min() >= _NS_BOUNDS_MS[0] and found.max() <= _NS_BOUNDS_MS[1]
        and (found == np.floor(found)).all()
    ):
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    seconds = np.zeros(len(values), dtype="int64")
    seconds[present] = np.floor_divide(found.astype("int64"), 1000)
    # Arrow writes a timestamp[s] as "2026-11-02 14:05:00" (4-digit years within the bounds)
    stamps = pa.array(seconds.astype("datetime64[s]"), mask=~present).cast(pa.large_string())
    text = pc.binary_join_element_wise(
        pc.utf8_slice_codeunits(stamps, 0, 10), pc.utf8_slice_codeunits(stamps, 11, 19),
        _text("T"))
    text = pc.binary_join_element_wise(text, _text("+00:00"), _text(""))
    return pd.Series(pd.array(text, dtype=pd.StringDtype("pyarrow", na_value=np.nan)),
                     index=values.index)


def machine_frame(df: pd.DataFrame) -> pd.DataFrame:
    """snake_case columns, ISO UTC times (``*_time_ms`` -> ``*_time``), whole seconds,
    rates as fractions, dates as ISO strings."""
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        s = df[col]
        if col.endswith("_time_ms"):
            out[col[:-3]] = iso_utc(s)
        elif col.endswith("_s") and pd.api.types.is_numeric_dtype(s):
            out[col] = pd.to_numeric(s).round().astype("Int64")
        elif col == "date":
            out[col] = s.astype(str)
        else:
            out[col] = s
    return out.reset_index(drop=True)


def _neutralise(column: pd.Series) -> pd.Series:
    """``column`` with its text cells that start with a trigger prefixed by a quote."""
    try:
        hit = column.str.startswith(_CSV_TRIGGERS, na=False).astype(bool)
    except AttributeError:  # an object column without any text: nothing to prefix
        return column
    if not hit.any():
        return column
    out = column.copy()
    out[hit] = "'" + column[hit]
    return out


def to_csv(df: pd.DataFrame, *, raw: bool = False) -> str:
    """CSV safe to open in a spreadsheet: text cells starting with = + - @ tab CR are
    prefixed with a quote (unless ``raw``). Numbers are left alone."""
    parts = _arrow_csv(df, raw=raw)
    return _pandas_csv(df, raw=raw) if parts is None else b"".join(parts).decode("utf-8")


def csv_payload(df: pd.DataFrame, *, raw: bool = False, encoded: bool
                ) -> Iterator[bytes] | str:
    """``to_csv(df)``; when ``encoded`` and Arrow writes it, its UTF-8 bytes a batch of
    rows at a time, for the writer to write as they come: what a UTF-8 text stream without
    newline translation writes of the text, with neither the whole text (160 MB at 5M
    messages) nor its bytes held at once."""
    parts = _arrow_csv(df, raw=raw)
    if parts is None:
        return _pandas_csv(df, raw=raw)
    return parts if encoded else b"".join(parts).decode("utf-8")


def _pandas_csv(df: pd.DataFrame, *, raw: bool = False, header: bool = True) -> str:
    """``to_csv`` by pandas' writer: what ``_arrow_csv`` writes, for every frame."""
    if not raw:
        df = df.copy()
        for col in df.columns:
            if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
                df[col] = _neutralise(df[col])
    # RFC 4180 line ends: the csv writer quotes a cell holding a character of the line
    # terminator, so a CR in a cell is quoted instead of splitting the row in a spreadsheet.
    return df.to_csv(index=False, lineterminator="\r\n", header=header)


#: rows per Arrow batch of ``_arrow_csv``: the cells of one batch are held at a time
_CSV_BATCH = 50_000
_TRIGGER_BYTES = np.frombuffer("".join(_CSV_TRIGGERS).encode(), dtype=np.uint8)


def _arrow_csv(df: pd.DataFrame, *, raw: bool) -> Iterator[bytes] | None:
    """``_pandas_csv(df)`` in UTF-8, byte for byte: the header, then batches of rows, each
    built column by column in Arrow (a 5M-message ``report leads`` writes 800,000 rows:
    pandas' writer spent ~8 s in its per-row loop). None for a frame this does not write,
    which pandas then writes: fewer than two columns (a row of one empty cell is quoted),
    names that are not text, a column ``_csv_cells`` does not write."""
    names = list(df.columns)
    if len(names) < 2 or not all(type(n) is str for n in names):
        return None
    if not all(_csv_writable(df.iloc[:, i]) for i in range(len(names))):
        return None
    return _csv_batches(df, names, raw=raw)


def _csv_batches(df: pd.DataFrame, names: list[str], *, raw: bool) -> Iterator[bytes]:
    import pyarrow as pa

    yield _csv_join([_csv_quote(pa.array([n], type=pa.large_string())) for n in names])
    for start in range(0, len(df), _CSV_BATCH):
        part = df.iloc[start:start + _CSV_BATCH]
        try:
            cells = [_csv_cells(part.iloc[:, i], raw=raw) for i in range(len(names))]
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Text Arrow does not take (a lone surrogate; the caches store none): pandas
            # writes the rest, each row as it would within the whole (rows are formatted
            # alone).
            yield _pandas_csv(df.iloc[start:], raw=raw, header=False).encode("utf-8")
            return
        yield _csv_join(cells)


def _csv_writable(s: pd.Series) -> bool:
    """Whether ``_csv_cells`` writes column ``s``: booleans, integers (nullable Int64 too),
    floats, and text with missing values."""
    dtype = s.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind == "O":
            return pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty")
        return dtype.kind in "biuf"
    return isinstance(dtype, pd.Int64Dtype) or pd.api.types.is_string_dtype(dtype)


def _csv_cells(s: pd.Series, *, raw: bool) -> Any:
    """The cells of column ``s`` (``_csv_writable``) as pandas' CSV writer writes them,
    quoted, as an Arrow large_string array without nulls."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dtype = s.dtype
    text = pa.large_string()
    # Numbers and booleans: never a delimiter, quote or line end to quote.
    if isinstance(dtype, np.dtype) and dtype.kind == "b":
        return pc.if_else(pa.array(s.to_numpy()), _text("True"), _text("False"))
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        return pa.array(s.to_numpy()).cast(text)
    if isinstance(dtype, pd.Int64Dtype):  # <NA> is an empty cell
        return pc.fill_null(pa.array(s, type=pa.int64(), from_pandas=True).cast(text), "")
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        # pandas formats floats by numpy's str (shortest repr), NaN as an empty cell
        values = s.to_numpy()
        return pc.fill_null(pa.array(values.astype(str), mask=np.isnan(values), type=text), "")
    # text; missing values (NaN, None, pd.NA) are empty cells
    column = pa.array(s, type=text, from_pandas=True)
    if isinstance(column, pa.ChunkedArray):  # a pyarrow-backed str column
        column = column.combine_chunks()
    if column.null_count:
        column = pc.fill_null(column, "")
    if not raw:  # as _neutralise: a text cell starting with a trigger gets a quote
        offsets, data = _offsets_data(column)
        starts = offsets[:-1]
        hit = np.zeros(len(column), dtype=bool)
        filled = starts < offsets[1:]
        hit[filled] = np.isin(data[starts[filled]], _TRIGGER_BYTES)
        if hit.any():
            column = pc.if_else(pa.array(hit),
                                pc.binary_join_element_wise(_text("'"), column, _text("")),
                                column)
    return _csv_quote(column)


def _offsets_data(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """A large_string array's offsets (one more than cells) and UTF-8 bytes, as numpy."""
    offsets_buf, data_buf = column.buffers()[1:3]
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[column.offset:
                                                          column.offset + len(column) + 1]
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
            else np.zeros(0, dtype=np.uint8))
    return offsets, data


def _text(value: str) -> Any:
    """``value`` as an Arrow large_string scalar (the kernels want their inputs' type)."""
    import pyarrow as pa

    return pa.scalar(value, pa.large_string())


def _csv_quote(cells: Any) -> Any:
    """Python's csv QUOTE_MINIMAL with the "\\r\\n" line end: a cell holding the
    delimiter, the quote, CR or LF is quoted, its quotes doubled."""
    import pyarrow.compute as pc

    offsets, data = _offsets_data(cells)
    used = data[offsets[0]:offsets[-1]].tobytes() if len(cells) else b""
    if not any(c in used for c in (b",", b'"', b"\r", b"\n")):  # the usual case: no cell
        return cells
    needs = pc.match_substring_regex(cells, '[,"\r\n]')
    quoted = pc.binary_join_element_wise(
        _text('"'), pc.replace_substring(cells, '"', '""'), _text('"'), _text(""))
    return pc.if_else(needs, quoted, cells)


def _csv_join(cells: list[Any]) -> bytes:
    """Rows of ``cells`` (equal-length large_string arrays without nulls): joined by
    commas, each ended by CRLF, as one UTF-8 buffer."""
    import pyarrow as pa
    import pyarrow.compute as pc

    last = pc.binary_join_element_wise(cells[-1], _text(""), _text("\r\n"))  # + CRLF + ""
    rows = pc.binary_join_element_wise(*cells[:-1], last, _text(","))
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    if len(rows) == 0:
        return b""
    offsets, _ = _offsets_data(rows)
    return rows.buffers()[2][int(offsets[0]):int(offsets[-1])].to_pybytes()


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    rows = [["" if _missing(v) else str(v) for v in r] for r in df.itertuples(index=False)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _missing(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def human_frame(df: pd.DataFrame, tz: ZoneInfo | timezone, clip: int | None = None,
                ) -> pd.DataFrame:
    """Strings for people: ``1h 05m``, ``87%``, local times, yes/no; text cut to ``clip``."""
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        s = df[col]
        if col.endswith("_time_ms"):
            out[col[:-3]] = s.map(lambda v: "" if _missing(v) else datetime.fromtimestamp(
                int(v) / 1000, tz).strftime("%a %Y-%m-%d %H:%M"))
        elif col.endswith("_s") and pd.api.types.is_numeric_dtype(s):
            out[col] = s.map(lambda v: "-" if _missing(v) else format_duration(float(v)))
        elif col in RATE_COLUMNS:
            out[col] = s.map(lambda v: "-" if _missing(v) else f"{float(v) * 100:.0f}%")
        elif col.endswith("_p"):
            out[col] = s.map(lambda v: "-" if _missing(v) else f"{float(v):.3f}")
        elif s.dtype == bool:
            out[col] = s.map({True: "yes", False: "no"})
        else:
            out[col] = s.map(lambda v: "" if _missing(v) else _clip(str(v), clip))
    return out


def _clip(text: str, width: int | None) -> str:
    """Long addresses and names are cut so a terminal table keeps its numbers on screen."""
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


_HEADERS = {
    "reply_rate": "reply rate", "median_s": "median", "p90_s": "p90", "mean_s": "mean",
    "min_s": "min", "max_s": "max", "within_sla": "in SLA", "handoffs_in": "covered",
    "handoffs_out": "handed off", "overall_median_s": "all replies",
    "response_s": "response", "business_s": "business", "age_s": "age",
    "business_age_s": "business age", "unanswered": "open",
}


def rich_table(
    df: pd.DataFrame,
    tz: ZoneInfo | timezone,
    *,
    title: str | None = None,
    caption: str | None = None,
    total_label: str | None = "TOTAL",
) -> Table:
    """A rich Table; a first-column value equal to ``total_label`` is drawn as a totals row."""
    from rich import box  # only the table format draws one: csv, json, ... never load rich
    from rich.table import Table

    h = human_frame(df, tz, clip=32)
    table = Table(title=title, caption=caption, header_style="bold", show_lines=False,
                  box=box.SIMPLE_HEAD, pad_edge=False,
                  min_width=min(len(title or ""), 100) or None)
    for col in h.columns:
        numeric = col not in ("rep", "team", "bucket", "date") and (
            pd.api.types.is_numeric_dtype(df[col]) if col in df else True
        )
        header = _HEADERS.get(col, col.replace("_", " "))
        # Numbers never shrink; names may, with an ellipsis, when the terminal is narrow.
        widest = int(h[col].str.len().max()) if len(h) else 0
        table.add_column(header, justify="right" if numeric else "left",
                         overflow="ellipsis", no_wrap=True,
                         min_width=max(widest, len(header)) if numeric else min(widest, 12))
    first = h.columns[0] if len(h.columns) else None
    for row in h.itertuples(index=False):
        is_total = first is not None and total_label is not None and row[0] == total_label
        if is_total:
            table.add_section()
        table.add_row(*row, style="bold" if is_total else None)
    return table


def atomic_write(path: Path, write: Callable[[io.IOBase], None], *, binary: bool) -> None:
    """Write to a temporary file beside ``path`` and rename it into place, so a reader
    (or a crash) never sees half a file."""
    path = Path(os.path.expandvars(str(path))).expanduser()
    if not path.parent.exists():
        raise UsageError(f"--output: directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_payload(payload: bytes | str | Iterable[bytes], output: Path | None) -> None:
    """Write ``payload`` (text, bytes, or bytes in parts) to ``output`` or stdout."""
    text = isinstance(payload, str)
    parts = [payload] if isinstance(payload, bytes | str) else payload
    if output:
        def write(f: io.IOBase) -> None:
            for part in parts:
                f.write(part)  # type: ignore[attr-defined]

        atomic_write(output, write, binary=not text)
    elif not text:
        sys.stdout.flush()  # any text written before goes first
        for part in parts:
            sys.stdout.buffer.write(part)  # type: ignore[arg-type]
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(payload)  # type: ignore[arg-type]
        sys.stdout.flush()
