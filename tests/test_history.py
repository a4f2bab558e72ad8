"""The docs, code and configuration describe the software as it is, not how it was built.

How a figure came about belongs in a dated record under docs/benchmarks/ (where dates are the point); everywhere
else this test fails on the markers of a work log: numbered work sessions, stops and issues, CI-run stories, commit
hashes, the machine's load or its other users, and headings that carry a date. Pure file reading, no imports of the
project.

The patterns are written so that this file does not match them itself (`\\s` where a marker has a space), and
its examples carry a `|` inside each marker that is taken out before they are checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# What is read: the user-facing docs, every Python file of the packages, jobs, benches and tests, the configuration
# and the build files. docs/benchmarks/ is left out on purpose.
PYTHON_TREES = ("twots", "pipelines", "jobs", "experiments", "bench", "tests")
SINGLE_FILES = ("README.md", "Makefile", "pyproject.toml", "databricks.yml", ".ci/run")
OTHER_GLOBS = ("docs/*.md", "conf/*.yaml", "resources/*.yml", "bench/*.sh", "docker/*")

# A commit hash: an abbreviated (7 to 12) or full (40) run of lower-case hex characters holding both a digit and a
# letter, not part of a longer word, number or hyphenated id. So MLflow run ids (32), sha256 test vectors (64),
# UUIDs, 0x literals and colour codes like #1f77b4 do not count.
COMMIT = re.compile(r"(?<![\w#-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])(?:[0-9a-f]{40}|[0-9a-f]{7,12})(?![\w-])")
# Hex words that are not commits; add one here with the reason if a real identifier ever trips the pattern.
NOT_COMMITS: set[str] = set()

MARKERS = {
    "a numbered work session": re.compile(r"\bsessions?\s+\d+", re.IGNORECASE),
    "an ordinal work session": re.compile(
        r"\b(?:second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth)\s+session\b", re.IGNORECASE),
    "a numbered stop": re.compile(r"\bstops?\s+\d+", re.IGNORECASE),
    "an issue number": re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE),
    "a CI-run story": re.compile(r"\bCI\s+runs?\b"),
    "the machine's load": re.compile(r"\bload\s+averages?\b", re.IGNORECASE),
    "the team on the machine": re.compile(r"\bother\s+engineers\b", re.IGNORECASE),
    "the machine's state": re.compile(r"\bquiet\s+box\b", re.IGNORECASE),
    "a dated change": re.compile(r"\b(?:since|until)\s+20\d\d-\d\d-\d\d\b", re.IGNORECASE),
}
# In Markdown: a heading that carries a date belongs to a record under docs/benchmarks/.
DATED_HEADING = re.compile(r"^#{1,6}\s.*\b20\d\d-\d\d-\d\d\b")


def checked_files() -> list[Path]:
    files = [REPO / name for name in SINGLE_FILES]
    for tree in PYTHON_TREES:
        files += sorted((REPO / tree).rglob("*.py"))
    for pattern in OTHER_GLOBS:
        files += sorted(REPO.glob(pattern))
    return [f for f in files if f.is_file()]


def markers_in(text: str, markdown: bool = False) -> list[tuple[int, str, str]]:
    """(line number, what, the matched text) of every history marker in `text`."""
    found = []
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if markdown and line.startswith("```"):
            in_fence = not in_fence
        for what, pattern in MARKERS.items():
            found += [(number, what, m.group(0)) for m in pattern.finditer(line)]
        found += [(number, "a commit hash", m.group(0)) for m in COMMIT.finditer(line)
                  if m.group(0) not in NOT_COMMITS]
        if markdown and not in_fence and DATED_HEADING.match(line):
            found.append((number, "a dated heading", line.strip()))
    return found


def test_no_history_in_docs_code_or_config():
    hits = []
    for path in checked_files():
        text = path.read_text(errors="replace")
        for number, what, match in markers_in(text, markdown=path.suffix == ".md"):
            hits.append(f"{path.relative_to(REPO)}:{number}: {what}: {match!r}")
    assert not hits, ("history markers outside docs/benchmarks/ (move the story to a dated record "
                      "docs/benchmarks/YYYY-MM-DD-topic.md, or drop it):\n" + "\n".join(hits))


@pytest.mark.parametrize("line", [
    "measured in session| 15 on the same box", "the fourth| session found", "before stop| 20's run",
    "issue| 10's question", "see issue| #30", "a clean-clone CI| run", "load| average 14-21", "Load| averages",
    "four other| engineers ran jobs", "on the quiet| box", "at commit 5080|5af", "(9e01|ef8)", "code 7584|f95,",
    "since| 2026-12-01", "until| 2026-11-30 each epoch", "full hash 0ff7091679e8a298cb01|df982cc76e5a21e7d496",
])
def test_markers_are_caught(line):
    line = line.replace("|", "")
    assert markers_in(line), line


@pytest.mark.parametrize("line", [
    "colour #1f77b4 and #ff7f0e", "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "run id 123e4567-e89b-12d3-a456-426614174000", "0x7fffffff", "a session of the user", "deadbeef",
    "1234567 rows", "the Spark session starts", "2017-11-25..2017-12-03", "issue the request", "stop the server",
    "sessions hours apart", "the loaded box", "MLflow run 0f1e2d3c4b5a69788796a5b4c3d2e1f0",
])
def test_ordinary_text_is_not_a_marker(line):
    assert not markers_in(line), line


def test_a_dated_heading_is_caught_outside_code_fences():
    text = "# Title\n### Cluster mode (2026-11-30)\n```\n# 2026-11-30 a shell comment\n```\n"
    assert [what for _, what, _ in markers_in(text, markdown=True)] == ["a dated heading"]
