"""The README is a front page, and the pages it leads to are there: README.md stays short, and every
relative link in README.md and docs/*.md points to a file or folder of this repository (and, where it
names a heading of a markdown page, to a heading that page has)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", flags=re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _links(text: str) -> list[str]:
    """Targets of the inline markdown links and images, outside code blocks and code spans."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    return [match[1] for match in _LINK.finditer(text)]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, code marks and punctuation dropped, spaces as hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    kept = "".join(c for c in heading if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", _FENCE.sub("", page.read_text()), flags=re.M):
        anchor = _anchor(heading)
        anchors.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
        seen[anchor] = seen.get(anchor, 0) + 1
    return anchors


def test_the_readme_is_a_front_page():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; at most {README_MAX_LINES}: move the detail to a docs/ page"
    )


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.split("#")[0]).resolve() for target in _links((ROOT / "README.md").read_text())}
    unlinked = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert unlinked == [], f"docs pages the README does not link to: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page.resolve()
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file or folder)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading with that anchor in {resolved.relative_to(ROOT)})")
    assert broken == [], f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_the_link_reader_sees_links_not_code():
    text = '[a](docs/x.md) ![b](img.png) `[c](not-a-link)`\n```\n[d](nor-this)\n```\n[e [f]](g.md#h "title")'
    assert _links(text) == ["docs/x.md", "img.png", "g.md#h"]
    assert _anchor("Several seeds: `make seeds`") == "several-seeds-make-seeds"
    assert _anchor("§1 The losses") == "1-the-losses"
    assert (
        _anchor("Push a model: `train.py --push_to_hub`") == "push-a-model-trainpy---push_to_hub"
    )  # as GitHub writes it
