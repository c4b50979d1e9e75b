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


def _configuration_rows(path: Path) -> dict[str, str]:
    """The rows of a "### Configuration" table, by the variable names of the first cell."""
    text = path.read_text()
    section = text.split("### Configuration", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            rows[line.split("|")[1].strip()] = line
    return rows


def _settings_defaults() -> dict[str, object]:
    """Every variable a service's settings model reads, with its default."""
    import importlib

    from pydantic import SecretStr
    from pydantic_core import PydanticUndefined

    from libs.common.settings import CommonSettings

    found: dict[str, object] = {}
    for service in ("identity", "portals", "invitations", "mailer", "gateway"):
        module = importlib.import_module(f"services.{service}.settings")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, CommonSettings):
                for name, field in value.model_fields.items():
                    default = field.default
                    if isinstance(default, SecretStr) or default is PydanticUndefined:
                        default = ...  # a development key, or computed: described in words
                    found[name.upper()] = default
    return found


def test_the_configuration_table_lists_every_variable_with_its_default() -> None:
    rows = _configuration_rows(ROOT / "README.md")
    documented: dict[str, str] = {}
    for first, line in rows.items():
        names = re.findall(r"`([A-Z<][A-Z0-9_<>]*)`", first)
        defaults = re.findall(r"`([^`]*)`", line.rstrip(" |").rsplit("|", 1)[1])
        for index, name in enumerate(names):
            documented[name] = defaults[index] if len(defaults) == len(names) else ""
    wrong = []
    for name, default in _settings_defaults().items():
        generic = re.sub(r"^(IDENTITY|PORTALS|INVITATIONS|MAILER|GATEWAY)_", "<SERVICE>_", name)
        if name not in documented and generic not in documented:
            wrong.append(f"{name}: not in the README's Configuration table")
        elif name in documented and documented[name] and default not in (None, "", ...):
            stated = documented[name]
            same = (
                float(stated) == float(default)  # type: ignore[arg-type]
                if isinstance(default, int | float) and not isinstance(default, bool)
                else stated.rstrip("/") == str(default).rstrip("/").lower()
                if isinstance(default, bool)
                else stated.rstrip("/") == str(default).rstrip("/")
            )
            if not same:
                wrong.append(f"{name}: the README says {stated!r}, the code {default!r}")
    assert not wrong, wrong


def test_docs_deploying_has_the_readme_configuration_table() -> None:
    readme = _configuration_rows(ROOT / "README.md")
    deploying = _configuration_rows(ROOT / "docs" / "deploying.md")
    assert sorted(readme) == sorted(deploying)
    relink = {"](docs/": "](", "](#": "](../README.md#"}
    for name, line in readme.items():
        for old, new in relink.items():
            line = line.replace(old, new)
        assert deploying[name] == line, name


def _section(markdown: str, heading: str) -> str:
    """From ``heading`` to the next heading of its level or above."""
    text = "\n" + markdown
    start = text.index(f"\n{heading}\n")
    level = len(heading.split(" ", 1)[0])
    end = re.compile(rf"\n#{{1,{level}}} ").search(text, start + 1)
    return text[start : end.start() if end else len(text)]


def test_every_reason_an_invitation_request_is_rejected_for_is_documented() -> None:
    """What an integration is promised about invitation.rejected: each reason the consumer
    answers with is in the reason tables (README and docs/inviting-from-other-systems.md)
    and in the AsyncAPI document's invitation.rejected; each field of invitation.requested
    is in the field tables."""
    import yaml

    from libs.common.events import InvitationRequested
    from services.invitations.consumer import REJECT_REASONS

    asyncapi = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    rejected = asyncapi["channels"]["invitation.rejected"]["description"]
    for path in (ROOT / "README.md", ROOT / "docs" / "inviting-from-other-systems.md"):
        section = _section(path.read_text(), "## Inviting clients from another system")
        rows = "\n".join(line for line in section.splitlines() if line.startswith("| `"))
        missing = sorted(r for r in REJECT_REASONS if f"`{r}`" not in rows)
        assert not missing, f"{path.name}: reasons not in the table: {missing}"
        fields = sorted(f for f in InvitationRequested.model_fields if f"`data.{f}`" not in rows)
        assert not fields, f"{path.name}: fields not in the table: {fields}"
    missing = sorted(r for r in REJECT_REASONS if r not in rejected)
    assert not missing, f"asyncapi invitation.rejected: {missing}"


def _deploying_sections(markdown: str) -> dict[str, str]:
    """Each ``### `` section of a Deploying chapter (up to the next ``## `` or ``### ``)."""
    sections: dict[str, str] = {}
    title = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            title = None
        elif line.startswith("### "):
            title = line[4:]
            sections[title] = ""
        elif title is not None:
            sections[title] += line + "\n"
    return sections


def _as_docs_links(markdown: str) -> str:
    """README text with its relative links as docs/deploying.md writes them."""

    def moved(link: re.Match[str]) -> str:
        target = link[1]
        if target.startswith("#"):
            return f"](../README.md{target})"
        if target.startswith("docs/"):
            return f"]({target.removeprefix('docs/')})"
        return f"](../{target})"

    return re.sub(r"\]\((?![a-z]+:)([^)\s]+)\)", moved, markdown)


def test_readme_and_docs_deploying_tell_each_topic_once() -> None:
    """The README's Deploying chapter and docs/deploying.md drifted apart (the same
    topics told differently: a section's later additions in one of them only, the
    upgrade's manual migrations without the gateway's). A section both have is now the
    same text (the Configuration table, ...) or, in one of them, a summary that links to
    the other's section, where the whole topic is told."""
    readme = (ROOT / "README.md").read_text()
    chapter = readme.split("\n## Deploying\n", 1)[1].split("\n## ", 1)[0]
    ours = _deploying_sections(chapter)
    theirs = _deploying_sections((ROOT / "docs" / "deploying.md").read_text())
    drifted = []
    for title in ours.keys() & theirs.keys():
        anchor = next(iter(_anchors(f"# {title}")))
        same = _as_docs_links(ours[title]) == theirs[title]
        linked = f"(docs/deploying.md#{anchor})" in ours[title] or (
            f"(../README.md#{anchor})" in theirs[title]
        )
        if not same and not linked:
            drifted.append(title)
    assert not drifted, f"told differently in the README and docs/deploying.md: {drifted}"
