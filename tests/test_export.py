"""`replytime export`: the bundled example as month-partitioned Parquet, read back with
pyarrow.dataset on both cache backends: exact counts, months, schema, and leads equal to
the API's; month edges and messages without a time; the export is whole or absent."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import replytime
from replytime.api import Analysis, refresh_threads
from replytime.config import load_config
from replytime.output import export
from replytime.output.render import machine_frame
from replytime.sources.files import import_paths
from replytime.sources.headers import parse_header_block
from replytime.store import Cache, open_cache
from tests.mailbuilder import Mailbox
from tests.test_cli import run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MBOX, CONFIG = EXAMPLES / "mailbox.mbox", EXAMPLES / "replytime.toml"
AS_OF = "2026-11-06T21:00:00+00:00"
TS = pa.timestamp("ms", tz="UTC")
CSV_LEAD_COLUMNS = ["thread_id", "lead_message_id", "lead_from", "lead_time", "rep", "answered",
                    "reply_message_id", "reply_time", "response_s", "business_s", "kind",
                    "responder", "addressed_rep", "team", "rule"]


def example_cache(db: str) -> Cache:
    cfg = load_config(CONFIG)
    cache = open_cache(db)
    import_paths(cache, [MBOX], account="example", keep=cfg.kept_headers())
    refresh_threads(cache, cfg, force=True)
    return cache


def read(root: Path, table: str) -> pd.DataFrame:
    """A table of an export as a data team reads it: the Hive-partitioned dataset."""
    dataset = ds.dataset(root / table, format="parquet", partitioning="hive")
    assert dataset.schema == export.SCHEMAS[table].append(pa.field("month", pa.string()))
    return dataset.to_table().to_pandas()


def utc_month(ms: pd.Series) -> list[str]:
    return pd.to_datetime(ms, unit="ms", utc=True).dt.strftime("%Y-%m").tolist()


def values(s: pd.Series) -> list[Any]:
    return s.astype(object).where(s.notna(), None).tolist()


@pytest.fixture(scope="module")
def sqlite_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("example") / "cache.sqlite"
    example_cache(str(db)).close()
    return db


def test_example_export_reads_back_exactly(backend: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "PAGE", 128)  # several pages (row groups) per month
    cache = example_cache(backend)
    cfg = load_config(CONFIG)
    out = tmp_path / "export"
    counts = replytime.export_parquet(cache, cfg, out, as_of=AS_OF)
    assert counts == {"messages": 898, "threads": 335, "leads": 152, "months": 3}
    assert cache.message_count() == 898

    messages, threads, leads = (read(out, t) for t in export.TABLES)
    assert len(messages) == 898 and len(threads) == 335 and len(leads) == 152
    assert messages["month"].value_counts().sort_index().to_dict() == {
        "2026-09": 348, "2026-10": 441, "2026-11": 109}
    assert threads["month"].value_counts().sort_index().to_dict() == {
        "2026-09": 130, "2026-10": 168, "2026-11": 37}
    assert leads["month"].value_counts().sort_index().to_dict() == {
        "2026-09": 66, "2026-10": 69, "2026-11": 17}
    # A message's month is its time's, a thread's its first message's, a lead's its lead time's.
    assert messages["month"].tolist() == utc_month(messages["time_ms"])
    assert threads["month"].tolist() == utc_month(threads["first_time_ms"])
    assert leads["month"].tolist() == utc_month(leads["lead_time_ms"])
    pages = pq.ParquetFile(out / "messages" / "month=2026-10" / "part-0.parquet")
    assert pages.metadata.num_row_groups == 4  # 441 messages in pages of 128

    analysis = Analysis(cache, cfg, as_of=AS_OF)
    assert sorted(messages["message_id"]) == sorted(analysis.messages["message_id"])
    assert messages["message_key"].is_unique
    assert (messages["time"] == pd.to_datetime(messages["time_ms"], unit="ms", utc=True)).all()
    assert set(threads["thread_id"]) == set(analysis.messages["thread_id"])
    assert threads["messages"].sum() == 898  # every message in exactly one thread
    assert (threads["duration_s"] * 1000 - (threads["last_time_ms"] - threads["first_time_ms"])
            ).abs().max() <= 500
    # The matcher's own reading of each message travels with it.
    flags = analysis.messages.set_index("message_id")[["from_internal", "to_external"]]
    mine = messages.set_index("message_id")[["from_internal", "to_external"]]
    pd.testing.assert_frame_equal(mine.loc[flags.index], flags, check_names=False)
    assert messages["to_addrs"].map(len).sum() == analysis.messages["to_addrs"].str.count(
        "@").sum()

    # Leads: the columns of `report leads --format csv`, typed, with the same values.
    api = machine_frame(analysis.leads()).sort_values("lead_message_id").reset_index(drop=True)
    got = leads.sort_values("lead_message_id").reset_index(drop=True)
    # The CSV's columns, the raw ms, then columns added since (appended, as the CSV does).
    assert list(api.columns) == CSV_LEAD_COLUMNS
    assert list(got.columns[:14]) == CSV_LEAD_COLUMNS[:14]
    assert list(got.columns[14:17]) == ["lead_time_ms", "reply_time_ms", "rule"]
    for col in ("lead_time", "reply_time"):
        got[col] = got[col].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    for col in CSV_LEAD_COLUMNS:
        assert values(got[col]) == values(api[col]), col
    assert int(got["answered"].sum()) == 134 and int((got["kind"] == "form").sum()) == 37
    truth = pd.read_csv(EXAMPLES / "expected_leads.csv")
    assert sorted(got["lead_message_id"]) == sorted(truth["lead_message_id"])

    manifest = json.loads((out / export.MANIFEST).read_text())
    assert manifest["rows"] == {"messages": 898, "threads": 335, "leads": 152}
    assert manifest["as_of"] == AS_OF and manifest["months"] == 3
    for table, schema in export.SCHEMAS.items():
        assert pq.read_schema(out / table / "_common_metadata") == schema
    cache.close()


def test_schema_types_are_the_documented_ones() -> None:
    m, t, lead = export.MESSAGES_SCHEMA, export.THREADS_SCHEMA, export.LEADS_SCHEMA
    assert m.field("time").type == TS and m.field("time_ms").type == pa.int64()
    assert m.field("to_addrs").type == pa.list_(pa.string())
    assert m.field("automated").type == pa.bool_() and m.field("problems").type == pa.int32()
    assert t.field("first_time").type == TS and t.field("messages").type == pa.int64()
    assert lead.field("lead_time").type == TS and lead.field("response_s").type == pa.int64()
    assert lead.field("answered").type == pa.bool_()
    # README.md, "Export to Parquet", lists every column with its type, table by table.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Export to Parquet", 1)[1].split("\n## ", 1)[0]
    for table, schema in export.SCHEMAS.items():
        block = section.split(f"### `{table}`", 1)[1].split("\n\n", 2)[1]
        documented = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", block, flags=re.M))
        assert list(documented) == [*schema.names, "month"], table
        for f in schema:
            assert documented[f.name] == str(f.type).replace("item: ", ""), (table, f.name)


def write_mailbox(mb: Mailbox, db: str) -> Cache:
    cache, cfg = open_cache(db), mb.config
    records = [(f"test/{i}", parse_header_block(b, keep=cfg.kept_headers()))
               for i, b in enumerate(mb.blocks)]
    cache.write_batch("test", records)
    refresh_threads(cache, cfg, force=True)
    return cache


def test_month_edges_and_messages_without_time(backend: str, tmp_path: Path) -> None:
    mb = Mailbox(tmp_path)
    lead = mb.send("Pat <pat@client.example>", ["alice@acme.example", "bob@acme.example"],
                   datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), cc="x@client.example")
    mb.send("alice@acme.example", "pat@client.example", datetime(2027, 1, 1, tzinfo=UTC),
            parent=lead)
    mb.send("bob@acme.example", "pat@client.example", None, parent=lead)  # no usable time
    mb.send("quinn@client.example", "carol@acme.example", None, subject="Undated")
    mb.send("sam@client.example", "carol@acme.example",
            datetime(2027, 3, 1, 4, tzinfo=UTC), subject="March")  # February is empty
    cache = write_mailbox(mb, backend)
    out = tmp_path / "out"
    counts = export.export_parquet(cache, mb.config, out, as_of="2027-04-01T00:00:00+00:00")
    assert counts == {"messages": 5, "threads": 3, "leads": 2, "months": 3}
    assert sorted(p.name for p in (out / "messages").iterdir()) == [
        "_common_metadata", "month=2026-12", "month=2027-01", "month=2027-03",
        f"month={export.NULL_MONTH}"]
    messages, threads, leads = (read(out, t) for t in export.TABLES)
    by_subject = messages.sort_values("time_ms", na_position="last")
    assert values(by_subject["month"]) == ["2026-12", "2027-01", "2027-03", None, None]
    assert values(by_subject["time_source"]) == ["date", "date", "date", "none", "none"]
    assert by_subject["to_addrs"].iloc[0].tolist() == ["alice@acme.example", "bob@acme.example"]
    assert by_subject["cc_addrs"].iloc[0].tolist() == ["x@client.example"]
    assert by_subject["cc_addrs"].iloc[1].tolist() == []
    assert by_subject["references"].iloc[1].tolist() == [lead]
    assert by_subject["time_offset_min"].iloc[0] == 0
    assert by_subject["problems"].tolist()[3:] == [2, 2]  # PROBLEM_NO_TIME
    t = threads.set_index("thread_id")
    # The lead's thread belongs to December, with its undated and its January message.
    assert t.loc[lead, "month"] == "2026-12" and t.loc[lead, "messages"] == 3
    assert t.loc[lead, "duration_s"] == 1 and t.loc[lead, "first_from"] == "pat@client.example"
    undated = t[t["subject"] == "Undated"]
    assert len(undated) == 1 and undated["month"].isna().all()
    assert undated["first_time"].isna().all() and undated["messages"].tolist() == [1]
    assert leads.sort_values("lead_time_ms")["month"].tolist() == ["2026-12", "2027-03"]
    answered = leads[leads["answered"]].iloc[0]
    assert answered["rep"] == "Alice" and answered["response_s"] == 1
    assert answered["reply_time"] == pd.Timestamp("2027-01-01", tz="UTC")
    cache.close()


def test_an_empty_cache_exports_schemas_only(tmp_path: Path) -> None:
    cache = open_cache(tmp_path / "cache.sqlite")
    counts = export.export_parquet(cache, load_config(CONFIG), tmp_path / "out")
    assert counts == {"messages": 0, "threads": 0, "leads": 0, "months": 0}
    for table in export.TABLES:
        assert [p.name for p in (tmp_path / "out" / table).iterdir()] == ["_common_metadata"]
        assert ds.dataset(tmp_path / "out" / table, format="parquet").count_rows() == 0


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_failed_export_leaves_nothing_and_keeps_the_old_one(
    sqlite_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, out = load_config(CONFIG), tmp_path / "out"
    real, calls = export._leads, []

    def failing(*args: Any) -> pa.Table:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(export, "_leads", failing)
    with pytest.raises(OSError, match="disk full"):
        export.export_parquet(sqlite_example, cfg, out, as_of=AS_OF)
    assert not out.exists() and leftovers(tmp_path) == []

    monkeypatch.setattr(export, "_leads", real)
    export.export_parquet(sqlite_example, cfg, out, as_of=AS_OF)
    before = (out / export.MANIFEST).read_text()
    calls.clear()
    monkeypatch.setattr(export, "_leads", failing)
    with pytest.raises(OSError, match="disk full"):
        export.export_parquet(sqlite_example, cfg, out, as_of="2026-10-01", force=True)
    assert (out / export.MANIFEST).read_text() == before and leftovers(tmp_path) == []
    assert len(read(out, "leads")) == 152


def test_cli_export_refusals_and_force(sqlite_example: Path, tmp_path: Path) -> None:
    base = ("--db", str(sqlite_example), "--config", str(CONFIG), "export")
    r = run(*base, "acme", "--as-of", AS_OF, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"exported 898 messages, 335 threads and 152 leads \(3 months\) to "
                        r"acme in \d+\.\ds\n", r.stderr)
    assert r.stdout == ""
    first = (tmp_path / "acme" / export.MANIFEST).read_text()

    r = run(*base, "acme", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == (
        "replytime: error: export: acme already holds an export; use --force to replace it\n")
    assert (tmp_path / "acme" / export.MANIFEST).read_text() == first

    r = run(*base, "acme", "--force", "--as-of", "2026-10-01T00:00:00+00:00", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "and 66 leads (3 months)" in r.stderr  # only September's leads existed then
    assert len(read(tmp_path / "acme", "leads")) == 66
    assert leftovers(tmp_path) == []

    r = run(*base, "acme2", "--format", "csv", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'csv'" in r.stderr
    assert not (tmp_path / "acme2").exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = run(*base, "mine", "--force", cwd=tmp_path)
    assert r.returncode == 2 and "not empty and not a replytime export" in r.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(*base, "empty", cwd=tmp_path).returncode == 0
    assert len(read(empty, "messages")) == 898

    r = run(*base, str(tmp_path / "no" / "such"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_cli_help_teaches(tmp_path: Path) -> None:
    assert "export" in run("--help", cwd=tmp_path).stdout
    r = run("export", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for text in ("--force", "--as-of", "parquet", "read_parquet", "month="):
        assert text in r.stdout


# -- the machine formats' fast paths, against pandas' own --------------------------------------
def _pandas_iso_utc(ms: pd.Series) -> pd.Series:
    """render.iso_utc as pandas formats it (what it did before Arrow did)."""
    values = pd.to_numeric(ms, errors="coerce")
    out = pd.to_datetime(values, unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return out.where(values.notna(), None)


@pytest.mark.parametrize("ms", [
    pd.Series([1788739317000, -1, 0, 999, 1000, -1001, 1788739317999]),  # seconds round down
    pd.Series([1788739317000.0, None, -1.0]),
    pd.Series(pd.array([5, None], dtype="Int64"), index=[7, 3]),
    pd.Series([None, None], dtype=object),
    pd.Series([], dtype="int64"),
    pd.Series([1.5, 2.0]),  # a fraction of a millisecond: pandas formats it
    pd.Series([-9_223_372_036_854, 9_223_372_036_853]),  # pandas' first and last millisecond
], ids=["ints", "floats", "nullable", "none", "empty", "fraction", "bounds"])
def test_iso_utc_is_pandas_strftime(ms: pd.Series) -> None:
    from replytime.output.render import iso_utc

    got, want = iso_utc(ms), _pandas_iso_utc(ms)
    pd.testing.assert_series_equal(got, want)
    assert got.array._pa_array.type == want.array._pa_array.type  # same Parquet schema


def test_kept_rows_read_as_arrow_equal_the_frame_read(tmp_path: Path) -> None:
    """The all-time kept read (a scan sorted after, by way of Arrow) gives _frame's frame:
    values, order, dtypes and arrays. The example's config less its form rules, whose
    leads are never kept."""
    from replytime.store.leads import KEPT_COLUMNS, KEPT_READ

    lines, skipping = [], False
    for line in CONFIG.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            skipping = line.strip() == "[[leads.forms]]"
        lines.append("" if skipping else line)
    config = tmp_path / "noforms.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config(config)
    assert not cfg.leads.forms
    cache = open_cache(str(tmp_path / "c.sqlite"))
    import_paths(cache, [MBOX], account="example", keep=cfg.kept_headers())
    refresh_threads(cache, cfg, force=True)
    as_of = int(datetime.fromisoformat(AS_OF).timestamp() * 1000)
    try:
        # Stored as written, the rows are in lead time order; moved, the first is out of it
        # (its time later than the second's, and equal to the third's: the id decides).
        first, _, third = (r[0] for r in cache._execute(  # type: ignore[attr-defined]
            "SELECT lead_id FROM leads ORDER BY lead_id LIMIT 3").fetchall())
        with cache.transaction():
            cache._execute(  # type: ignore[attr-defined]
                "UPDATE leads SET lead_time_ms = (SELECT lead_time_ms FROM leads "
                "WHERE lead_id = ?) WHERE lead_id = ?", (third, first))
        for columns in (KEPT_READ, KEPT_COLUMNS, ("lead_id", "reply_time_ms", "rule")):
            for span in ((None, None), (as_of - 7 * 86_400_000, as_of)):
                got = cache.kept_leads(*span, as_of, columns=columns)
                names = ", ".join(c for c in KEPT_COLUMNS if c in columns)
                where = " AND lead_time_ms >= ? AND lead_time_ms < ?" if span[0] else ""
                want = cache._frame(  # type: ignore[attr-defined]
                    f"SELECT {names} FROM leads WHERE lead_time_ms <= ?{where} "
                    "ORDER BY lead_time_ms, lead_id", [as_of, *(span if span[0] else ())])
                assert len(got) > 5
                pd.testing.assert_frame_equal(got, want)
                assert [type(got[c].array) for c in got] == [type(want[c].array) for c in want]
    finally:
        cache.close()
