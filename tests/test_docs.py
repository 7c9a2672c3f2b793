"""The docs stand on their own and say what the commands really print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_commands_md_is_what_the_commands_print() -> None:
    """docs/commands.md is regenerated from real runs on the example mailbox; a change to a
    command's help or output that is not in the docs fails here."""
    p = subprocess.run([sys.executable, str(ROOT / "docs" / "build_commands.py"), "--check"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr


def test_every_report_command_is_documented() -> None:
    text = (ROOT / "docs" / "commands.md").read_text()
    for kind in ("reps", "leads", "unanswered", "volume", "threads", "sla", "compare", "weekly"):
        assert f"$ replytime --db acme.sqlite report {kind} " in text, kind
    for command in ("init", "import", "sync", "status", "explain", "export", "demo"):
        assert f"$ replytime {command} --help" in text, command


def test_no_file_names_a_path_outside_the_repository() -> None:
    """README, docs, code, tests, benchmarks and examples never point outside the clone."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    # Spelled in pieces, so that this file does not match itself.
    words = ["../" + "shared", "shared" + "/corpora", "shared" + "/docs", "PRODUCT" + ".md",
             "the " + "brief", "product " + "brief", "brief" + ", section", "Brief" + ", section"]
    outside = re.compile("|".join(re.escape(w) for w in words))
    hits = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".mbox", ".png", ".parquet"} or name.startswith("tests/corpora/"):
            continue
        text = path.read_text(errors="replace")
        hits += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1)
                 if outside.search(line)]
    assert not hits, hits


def test_every_cited_section_of_the_docs_exists() -> None:
    """Code and tests cite a section of the docs by its heading, in double quotes after the
    file name: every such heading is there, so a reader who follows a comment finds it."""
    cited = re.compile(r'docs/(\w+)\.md, "([^"]+)"')
    missing = []
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").glob("*.py")]:
        for doc, heading in cited.findall(path.read_text()):
            text = (ROOT / "docs" / f"{doc}.md").read_text()
            if not re.search(rf"^#+ {re.escape(heading)}\s*$", text, re.M):
                missing.append(f"{path.name}: docs/{doc}.md, {heading!r}")
    assert not missing, missing
