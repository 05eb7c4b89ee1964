"""The README is the front door and every link of the documentation resolves.

Checked for README.md, docs/*.md and the READMEs of bench/ and deploy/: each
relative markdown link names a file that exists (relative to the document's
folder) and, with an ``#anchor``, a heading of that file under GitHub's slug
rules. Links into the sibling checkout ``../shared/`` (the contract) are
accepted when that checkout is missing, since CI clones only this repository. External
(http, https, mailto) links are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DOCS = sorted((ROOT / "docs").glob("*.md"))
OTHERS = [ROOT / p for p in ("bench/README.md", "bench/IMPORT.md", "deploy/README.md")]
CHECKED = [ROOT / "README.md", *DOCS, *(p for p in OTHERS if p.exists())]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(
    r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            if fenced is None:
                fenced = fence.group(1)
            elif fence.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before duplicates are numbered)."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path):
    """(line number, target) of every link outside code."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        reference = REFERENCE_LINK.match(line)
        if reference:
            yield number, reference.group(1)
            continue
        # Code spans cannot hold links, but a link's text can be a code span.
        plain = CODE_SPAN.sub(lambda m: "x" * len(m.group(0)), line)
        for match in INLINE_LINK.finditer(plain):
            start, end = match.span(2)
            yield number, line[start:end]


def broken(path: Path, target: str) -> str | None:
    """Why a link from `path` to `target` does not resolve, or None."""
    if EXTERNAL.match(target):
        return None
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / file_part).resolve() if file_part else path
    if not resolved.exists():
        if resolved.is_relative_to(SHARED) and not SHARED.exists():
            return None  # the contract's checkout, absent from CI clones
        return "no such file"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"no heading #{anchor} in {resolved.name}"
    if anchor and resolved.is_dir():
        return "an anchor on a folder"
    return None


@pytest.mark.parametrize("doc", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    problems = [
        f"{doc.relative_to(ROOT)}:{number}: ({target}) {why}"
        for number, target in links(doc)
        if (why := broken(doc, target))
    ]
    assert not problems, "\n".join(problems)


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    assert first_block, "README.md has no fenced code block"
    for command in ("make run", "make test"):
        assert command in first_block.group(1), command


def test_readme_links_every_docs_page():
    readme = ROOT / "README.md"
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for _, target in links(readme)
        if not EXTERNAL.match(target)
    }
    assert DOCS, "docs/ holds no page"
    missing = [str(p.relative_to(ROOT)) for p in DOCS if p.resolve() not in linked]
    assert not missing, f"not linked from README.md: {missing}"


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Durability: what a 200 promises", "durability-what-a-200-promises"),
        (
            "Activity: one item, or a page (MetaX 2.1)",
            "activity-one-item-or-a-page-metax-21",
        ),
        ("What `make run` and `make test` need", "what-make-run-and-make-test-need"),
        ("Redis client: why these timeouts", "redis-client-why-these-timeouts"),
        ("snake_case and dash-ed", "snake_case-and-dash-ed"),
    ],
)
def test_slugs_follow_github(heading, expected):
    assert slug(heading) == expected


def test_duplicate_headings_are_numbered(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A\n## Notes\n```\n# not a heading\n```\n## Notes\n## Notes\n")
    assert anchors(page) == {"a", "notes", "notes-1", "notes-2"}
