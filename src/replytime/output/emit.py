"""Write one report table in the format asked for: the terminal table, the machine formats
(``replytime.output.render``) or an HTML page (``replytime.output.html``). Kept apart from
both so neither imports the other's caller.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd

from replytime.errors import UsageError
from replytime.output.render import (
    atomic_write,
    csv_payload,
    machine_frame,
    rich_table,
    to_markdown,
    write_payload,
)
from replytime.output.terminal import console


def emit_frame(
    df: pd.DataFrame,
    fmt: str,
    *,
    output: Path | None,
    tz: ZoneInfo | timezone,
    title: str | None = None,
    caption: str | None = None,
    note: str | None = None,
    raw_csv: bool = False,
) -> None:
    """Write one table in ``fmt`` to ``output`` (atomically) or stdout. ``note`` (such as
    ``render.empty_note``'s) is a line under the table in the human formats only."""
    if fmt == "table":
        if note:
            caption = note + (f"\n{caption}" if caption else "")
        table = rich_table(df, tz, title=title, caption=caption)
        if output:
            from rich.console import Console  # only for the table: not csv, json, ...

            buf = io.StringIO()
            Console(file=buf, width=120, no_color=True).print(table)
            atomic_write(output, lambda f: f.write(buf.getvalue()), binary=False)
        else:
            console().print(table)
        return
    if fmt == "html":
        from replytime.output.html import frame_to_html

        write_payload(frame_to_html(df, title or "replytime report", tz, note), output)
        return
    m = machine_frame(df)
    if fmt == "parquet":
        data = io.BytesIO()
        m.to_parquet(data, index=False)
        payload: bytes | str | Iterator[bytes] = data.getvalue()
    elif fmt == "csv":
        # Bytes where the text would be written as UTF-8 without newline translation.
        utf8 = output is not None or (hasattr(sys.stdout, "buffer") and (
            sys.stdout.encoding or "").lower() in ("utf-8", "utf8"))
        payload = csv_payload(m, raw=raw_csv, encoded=utf8 and os.linesep == "\n")
    elif fmt == "json":
        # pandas writes an empty frame as "[\n\n]"; an empty report is plain "[]".
        payload = (m.to_json(orient="records", indent=2, force_ascii=False) if len(m)
                   else "[]") + "\n"
    elif fmt == "jsonl":
        # No rows, no lines (pandas would write one blank line, which is not JSON).
        payload = m.to_json(orient="records", lines=True, force_ascii=False) if len(m) else ""
        if payload and not payload.endswith("\n"):
            payload += "\n"
    elif fmt == "markdown":
        payload = (f"## {title}\n\n" if title else "") + to_markdown(m)
        if note:
            payload += f"\n_{note}_\n"
    else:
        raise UsageError(f"--format: {fmt!r} is not available for this report")
    write_payload(payload, output)


