"""HTML output: the weekly page and plain report tables, checked as text and in a real
headless Chromium (Debian package ``chromium``; .ci/run installs it)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from replytime.analysis.weekly import WeeklyReport, weekly_report
from replytime.output.html import frame_to_html, render_weekly_html, svg_daily, svg_distribution
from tests.test_weekly import AS_OF, build

CHARTS = ("chart-daily", "chart-distribution", "chart-heatmap")
EVIL = '<script>alert("x")</script> & quote'


def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)
    if path is None:
        pytest.fail("chromium is not installed: the HTML tests need a real browser. Install "
                    "it with `apt-get install -y chromium` (.ci/run does).")
    return path


def run_chromium(*args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


@pytest.fixture
def report(tmp_path: Path) -> WeeklyReport:
    return weekly_report(build(tmp_path, business=True).analysis(as_of=AS_OF))


class Collect(HTMLParser):
    """Tags with their attributes, and all text, of a document."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(doc: str) -> Collect:
    p = Collect()
    p.feed(doc)
    return p


def test_weekly_html_is_self_contained_and_escaped(report: WeeklyReport) -> None:
    doc = render_weekly_html(report)
    p = parse(doc)
    tags = [t for t, _ in p.tags]
    assert "script" not in tags and "link" not in tags and "img" not in tags
    # No URL but the SVG namespace: nothing to fetch.
    urls = set(re.findall(r"https?://[^\s\"'<>]+", doc))
    assert urls == {"http://www.w3.org/2000/svg"}
    assert EVIL in "".join(p.text)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; quote" in doc
    svgs = {a["id"]: a for t, a in p.tags if t == "svg"}
    assert set(svgs) == set(CHARTS)
    for a in svgs.values():
        w, h = int(a["width"] or 0), int(a["height"] or 0)
        assert w > 0 and h > 0 and a["viewbox"] == f"0 0 {w} {h}"  # (parser lowercases)


def test_weekly_html_numbers(report: WeeklyReport) -> None:
    text = " ".join(" ".join(parse(render_weekly_html(report)).text).split())
    # Team cards (business time): median 30m, 1h 30m faster than 2h 00m; p90 1h 24m.
    assert "Median 30m ▼1.5h last period 2h 00m" in text
    assert "p90 1h 24m ▼42m last period 2h 06m" in text
    assert "Within SLA 57% ▲17pp last period 40%" in text
    assert "Leads 7 ▲2 last period 5" in text
    assert "Thu 12 Nov 14:00 14h 00m Carol l5@client.example" in text
    assert "SLA target 1h" in text


def _svg_counts(svg: str) -> dict[str, int]:
    return {t: len(re.findall(f"<{t}[ >]", svg)) for t in ("rect", "circle", "text")}


def test_distribution_chart_samples_many_points_and_handles_zero() -> None:
    times = pd.DataFrame({"rep": ["A"] * 1000 + ["B"] * 3,
                          "response_s": np.r_[np.linspace(0, 90000, 1000), [0, 0, 120]]})
    svg = svg_distribution(times, ["A", "B", "C"], 3600)
    assert svg.startswith('<svg id="chart-distribution"')
    assert _svg_counts(svg)["circle"] == 300 + 3  # sampled to 300 dots, C has none
    assert ">≤1m<" in svg  # zeros sit on the first tick, labelled as such
    assert ">SLA target 1h<" in svg
    assert ">C<" not in svg  # reps without answered leads get no row


def test_daily_chart_thins_labels_on_long_periods() -> None:
    days = pd.date_range("2026-10-01", periods=31, freq="D").date
    daily = pd.DataFrame({"date": days, "leads": np.arange(31), "first_replies": np.ones(31,
                                                                                    int)})
    svg = svg_daily(daily)
    assert svg.count(" Oct<") == 16  # every second day of 31
    assert _svg_counts(svg)["rect"] == 30 + 31 + 2  # non-zero bars + legend


def test_frame_to_html_escapes_and_marks_totals() -> None:
    df = pd.DataFrame({"rep": ["=cmd|' /C calc'!A0", EVIL, "TOTAL"], "leads": [1, 2, 3],
                       "median_s": [90.0, np.nan, 4000.0], "reply_rate": [0.5, 1, 0.75]})
    doc = frame_to_html(df, "Per rep <b>", pd.Timestamp.now("UTC").tz)
    p = parse(doc)
    assert "script" not in [t for t, _ in p.tags] and "b" not in [t for t, _ in p.tags]
    text = " ".join(" ".join(p.text).split())
    assert "Per rep <b>" in text and EVIL in text
    assert "1m 1 50%" not in text and "1 1m 50%" in text  # columns in order, human values
    assert "TOTAL 3 1h 06m 75%" in text
    assert [a.get("class") for t, a in p.tags if t == "tr"] == [None, None, None, "total"]


# -- in a real browser -----------------------------------------------------------------------
MEASURE = """<script>
for (const s of document.querySelectorAll('svg')) {
  const r = s.getBoundingClientRect();
  s.setAttribute('data-w', Math.round(r.width));
  s.setAttribute('data-h', Math.round(r.height));
  s.setAttribute('data-shapes', s.querySelectorAll('rect,circle,line').length);
}
</script>"""


def test_weekly_html_renders_in_chromium(report: WeeklyReport, tmp_path: Path) -> None:
    doc = render_weekly_html(report)
    page = tmp_path / "weekly.html"
    page.write_text(doc, encoding="utf-8")
    # The page as written: Chromium parses it into the three charts and runs nothing.
    dom = run_chromium("--dump-dom", page.as_uri()).stdout
    assert "<script" not in dom
    for chart in CHARTS:
        assert f'<svg id="{chart}"' in dom
    # Laid-out sizes: a copy with a measuring script (the page's own policy forbids
    # scripts, so the copy drops it; layout is the same).
    probe = tmp_path / "probe.html"
    probe.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", doc)
                     .replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dom = run_chromium("--window-size=1200,2000", "--dump-dom", probe.as_uri()).stdout
    sizes = {m[0]: (int(m[1]), int(m[2]), int(m[3])) for m in re.findall(
        r'<svg id="([\w-]+)"[^>]*data-w="(\d+)" data-h="(\d+)" data-shapes="(\d+)"', dom)}
    assert set(sizes) == set(CHARTS)
    for chart, (w, h, shapes) in sizes.items():
        assert w >= 900 and h >= 150 and shapes >= 10, (chart, w, h, shapes)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_weekly_html_screenshot(report: WeeklyReport, tmp_path: Path) -> None:
    page = tmp_path / "weekly.html"
    page.write_text(render_weekly_html(report), encoding="utf-8")
    png = tmp_path / "weekly.png"
    run_chromium(f"--screenshot={png}", "--window-size=1200,2000", page.as_uri())
    assert png.exists()
    assert png_size(png) == (1200, 2000)
    # A blank page of this size is about 11 kB; text, charts and colour make it far more.
    assert png.stat().st_size > 60_000
