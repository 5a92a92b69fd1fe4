"""Every relative link in the repository's Markdown resolves: the file exists, and a `#anchor` names a heading
of the Markdown file it points into (GitHub's anchors). Web addresses are not fetched."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from tests.markdown import ROOT, Link, anchors, links, markdown_files


def broken(link: Link) -> str | None:
    """Why the link does not resolve, or None."""
    path_part, _, anchor = link.target.partition("#")
    path_part = unquote(path_part)
    if not path_part:
        target = link.source
    elif path_part.startswith("/"):  # a code host resolves these from the repository's root
        target = ROOT / path_part.lstrip("/")
    else:
        target = (link.source.parent / path_part).resolve()
    if not target.exists():
        return f"{path_part} does not exist"
    if ROOT.resolve() not in (target.resolve(), *target.resolve().parents):
        return f"{path_part} is outside the repository"
    if anchor:
        if target.suffix != ".md":
            return f"#{anchor} points into {path_part}, which is not Markdown"
        if anchor not in anchors(target.read_text()):
            return f"{target.relative_to(ROOT)} has no heading with the anchor #{anchor}"
    return None


def test_every_relative_link_and_anchor_in_the_markdown_resolves() -> None:
    files = markdown_files()
    assert ROOT / "README.md" in files and ROOT / "docs" / "runbooks.md" in files
    problems = [f"{link.source.relative_to(ROOT)}:{link.line}: ({link.target}) {why}"
                for path in files for link in links(path) if (why := broken(link))]
    assert not problems, "broken links:\n  " + "\n  ".join(problems)


def test_the_checker_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    page = ROOT / "docs" / "runbooks.md"
    assert broken(Link(page, 1, "metrics.md#receivers")) is None
    assert broken(Link(page, 1, "#sidecardown")) is None
    assert broken(Link(page, 1, "../collector-config/k8s/")) is None
    assert broken(Link(page, 1, "metrics.md#no-such-heading")) == "docs/metrics.md has no heading with the anchor " \
                                                                  "#no-such-heading"
    assert broken(Link(page, 1, "nothing-here.md")) == "nothing-here.md does not exist"
    assert broken(Link(page, 1, "../../outside")) is not None
