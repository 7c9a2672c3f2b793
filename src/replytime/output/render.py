"""Output: machine formats (csv, json, jsonl, parquet) with the stable columns of
docs/definitions.md, and human ones (terminal table, markdown). Nothing here fetches or
computes metrics."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
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


def iso_utc(ms: pd.Series) -> pd.Series:
    """Epoch milliseconds -> ``2026-11-02T14:05:00+00:00`` (None stays empty)."""
    values = pd.to_numeric(ms, errors="coerce")
    dt = pd.to_datetime(values, unit="ms", utc=True)
    out = dt.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return out.where(values.notna(), None)


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
    if not raw:
        df = df.copy()
        for col in df.columns:
            if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
                df[col] = _neutralise(df[col])
    # RFC 4180 line ends: the csv writer quotes a cell holding a character of the line
    # terminator, so a CR in a cell is quoted instead of splitting the row in a spreadsheet.
    return df.to_csv(index=False, lineterminator="\r\n")


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


def write_payload(payload: bytes | str, output: Path | None) -> None:
    binary = isinstance(payload, bytes)
    if output:
        atomic_write(output, lambda f: f.write(payload), binary=binary)  # type: ignore[arg-type]
    elif binary:
        sys.stdout.buffer.write(payload)  # type: ignore[arg-type]
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(payload)  # type: ignore[arg-type]
        sys.stdout.flush()
