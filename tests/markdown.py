"""Reading the project's Markdown as a code host renders it: heading anchors, relative links, table rows.

Shared by the documentation tests (tests/unit/test_docs.py, tests/unit/test_doc_links.py) and the
first-scrape metrics test (tests/integration/test_insight.py).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the target stops at whitespace or the closing parenthesis.
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but `-` and `_` removed, spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> list[str]:
    """Every heading's anchor in document order, duplicates suffixed -1, -2 as GitHub does."""
    seen: dict[str, int] = {}
    found: list[str] = []
    for _, line in prose_lines(text):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.append(base if count == 0 else f"{base}-{count}")
    return found


def sections(text: str, level: int) -> dict[str, str]:
    """Heading text (at exactly `level`) -> the text up to the next heading of that level or above."""
    found: dict[str, str] = {}
    current: str | None = None
    body: list[str] = []
    for _, line in prose_lines(text):
        match = _HEADING.match(line)
        if match and len(match.group(1)) <= level:
            if current is not None:
                found[current] = "\n".join(body)
            current = match.group(2) if len(match.group(1)) == level else None
            body = []
        elif current is not None:
            body.append(line)
    if current is not None:
        found[current] = "\n".join(body)
    return found


@dataclass(frozen=True)
class Link:
    source: Path
    line: int
    target: str


def links(path: Path) -> list[Link]:
    """Relative links of a Markdown file (not web or mail addresses), outside code."""
    found: list[Link] = []
    for number, line in prose_lines(path.read_text()):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            found.append(Link(path, number, target))
    return found


def markdown_files() -> list[Path]:
    """The repository's Markdown files, as git knows them (tracked or new, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return sorted(ROOT / name for name in listed if (ROOT / name).exists())


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row in the text, header and separator rows excluded."""
    rows: list[list[str]] = []
    for _, line in prose_lines(text):
        if not line.startswith("|") or re.fullmatch(r"\|[\s|:-]+\|?", line.strip()):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return rows


@dataclass(frozen=True)
class MetricRow:
    names: tuple[str, ...]
    type: str
    labels: tuple[str, ...]
    meaning: str


def metric_rows() -> list[MetricRow]:
    """The rows of docs/metrics.md's tables whose first cell names metric families in backticks."""
    rows: list[MetricRow] = []
    for cells in table_rows((DOCS / "metrics.md").read_text()):
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        names = tuple(re.findall(r"`([a-z_:][a-z0-9_:]*)`", cells[0]))
        labels = tuple(re.findall(r"`([a-z_][a-z0-9_]*)`", cells[2]))
        rows.append(MetricRow(names, cells[1], labels, cells[3]))
    return rows
