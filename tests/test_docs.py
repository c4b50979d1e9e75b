"""The docs hold: every link in the README and docs/ that points inside the repository
finds its file (and its heading, for a #fragment); no link or mention points at a design
document outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "SECURITY.md",
    *(ROOT / "docs").glob("*.md"),
]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            anchors.add(title.replace(" ", "-"))
    return anchors


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [a or b for a, b in LINK.findall(text)]


def test_every_link_inside_the_repository_finds_its_target() -> None:
    broken = []
    for doc in DOCS:
        for link in _links(doc):
            if re.match(r"^[a-z]+:", link):
                continue  # http(s), mailto: outside the repository
            target, _, fragment = link.partition("#")
            path = (doc.parent / target).resolve() if target else doc
            if not path.exists() or ROOT not in (path, *path.parents):
                broken.append(f"{doc.relative_to(ROOT)}: {link}")
            elif fragment and path.suffix == ".md" and fragment not in _anchors(path.read_text()):
                broken.append(f"{doc.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, broken


def test_no_reference_to_a_design_document_outside_the_repository() -> None:
    stray = []
    for path in [
        *DOCS,
        *ROOT.glob("libs/**/*.py"),
        *ROOT.glob("services/**/*.py"),
        *ROOT.glob("tests/**/*.py"),
        *ROOT.glob("examples/*.py"),
    ]:
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(?<![/\w])DESIGN\.md|seed/|\.\./shared", line):
                stray.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not stray, stray
    assert (ROOT / "docs" / "design.md").is_file()


def test_the_repository_has_a_licence_and_a_changelog() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License"), "an OSI licence"
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()
