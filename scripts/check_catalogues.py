"""Every shipped language has every message (issue 17).

For each service with a ``locale`` folder (gateway, mailer), the msgids are extracted from
its sources with Babel's extractor (the files and options of its babel.cfg, else Python
and Jinja templates with the i18n extension; keywords ``_``, ``gettext``, ``ngettext`` and
``N_``). A language passes when the union of its ``.po`` files has a non-empty
translation of every msgid, with the same placeholders (``%(name)s``, ``{name}``).

    python scripts/check_catalogues.py            # exit 1 naming each gap (make test)
    python scripts/check_catalogues.py --update   # add new msgids to the .po files,
                                                  # keeping translations (make translations)

Where a new msgid goes: a service's ``admin.po`` takes those of ``templates/admin``,
``messages.po`` the others (unless another file of the language already has it).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from babel.messages import extract as babel_extract
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("gateway", "mailer")
# Shared modules whose N_-marked messages a service shows (and so must translate).
SHARED_SOURCES = {
    "gateway": (
        "libs/common/passwords.py",
        "libs/common/i18n.py",
        "libs/common/activity.py",
        "libs/common/text.py",
    )
}
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
METHODS = [
    ("**.py", "python"),
    ("**/templates/**.html", "jinja2"),
    ("**/templates/**.txt", "jinja2"),
]
OPTIONS = {
    "**/templates/**.html": {"extensions": "jinja2.ext.i18n"},
    "**/templates/**.txt": {"extensions": "jinja2.ext.i18n"},
}
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]|\{(\w*)\}|%[sd]")
SOURCE = "en"


@dataclass(frozen=True)
class Message:
    msgid: str
    plural: str | None
    path: str  # where it was found, relative to the service folder


def mapping(service_dir: Path) -> tuple[list[tuple[str, str]], dict[str, dict[str, str]]]:
    """The service's own babel.cfg (the files and Jinja options its extraction uses), else
    Python files and templates."""
    cfg = service_dir / "babel.cfg"
    if cfg.exists():
        with cfg.open() as fp:
            methods, options = parse_mapping_cfg(fp)
        return list(methods), dict(options)
    return METHODS, OPTIONS


def extract(service_dir: Path) -> dict[str, Message]:
    """msgid → the message, from the service's Python files and templates."""
    found: dict[str, Message] = {}
    methods, options = mapping(service_dir)
    for filename, _lineno, message, _comments, _context in extract_from_dir(
        str(service_dir), methods, options_map=options, keywords=KEYWORDS
    ):
        if "locale" in Path(filename).parts:
            continue
        if isinstance(message, tuple):
            msgid, plural = message[0], message[1]
        else:
            msgid, plural = message, None
        if msgid and msgid not in found:
            found[msgid] = Message(msgid, plural, filename)
    shipped = service_dir.resolve().parent == (ROOT / "services").resolve()
    for source in SHARED_SOURCES.get(service_dir.name, ()) if shipped else ():
        path = ROOT / source
        with path.open("rb") as fp:
            for _lineno, message, _comments, _context in babel_extract.extract(
                "python", fp, KEYWORDS
            ):
                if isinstance(message, str) and message not in found:
                    found[message] = Message(message, None, source)
    return found


def placeholders(text: str) -> list[str]:
    return sorted(m.group(0) for m in PLACEHOLDER.finditer(text))


def languages(service_dir: Path) -> list[Path]:
    folder = service_dir / "locale"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "LC_MESSAGES").is_dir() and p.name != SOURCE)


def load(language_dir: Path) -> dict[str, tuple[Path, object]]:
    """msgid → (the .po file, its msgstr) over every .po file of the language."""
    merged: dict[str, tuple[Path, object]] = {}
    for path in sorted((language_dir / "LC_MESSAGES").glob("*.po")):
        with path.open("rb") as fp:
            catalog = read_po(fp, locale=language_dir.name)
        for message in catalog:
            if not message.id:
                continue
            msgid = message.id if isinstance(message.id, str) else message.id[0]
            if message.string or msgid not in merged:
                merged[msgid] = (path, message.string)
    return merged


def plural_forms(language_dir: Path) -> dict[Path, str]:
    """Each .po file's Plural-Forms header. They must agree: a language's files are merged
    into one catalogue, which counts plurals with the first file's rule."""
    forms: dict[Path, str] = {}
    for path in sorted((language_dir / "LC_MESSAGES").glob("*.po")):
        with path.open("rb") as fp:
            forms[path] = read_po(fp, locale=language_dir.name).plural_forms
    return forms


def problems(service_dir: Path) -> list[str]:
    """Every gap, as "<lang> <file>: <what> <msgid>"."""
    wanted = extract(service_dir)
    found: list[str] = []
    for language_dir in languages(service_dir):
        have = load(language_dir)
        lang = language_dir.name
        forms = plural_forms(language_dir)
        if len(set(forms.values())) > 1:
            listed = "; ".join(f"{_shown(p)}: {f}" for p, f in forms.items())
            found.append(f"{lang}: the .po files' Plural-Forms differ ({listed})")
        for msgid, message in wanted.items():
            entry = have.get(msgid)
            where = _shown(entry[0] if entry else language_dir / "LC_MESSAGES")
            strings = _strings(entry[1] if entry else None)
            if not strings or not all(s.strip() for s in strings):
                found.append(f"{lang} {where}: no translation of {msgid!r} ({message.path})")
                continue
            expected = placeholders(msgid)
            for text in strings:
                if placeholders(text) != expected and not (
                    message.plural and placeholders(text) == placeholders(message.plural)
                ):
                    found.append(
                        f"{lang} {where}: placeholders {placeholders(text)} differ from"
                        f" {expected} in the translation of {msgid!r}"
                    )
    return found


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return []


def update(service_dir: Path) -> list[Path]:
    """Adds every extracted msgid a language lacks to its admin.po or messages.po."""
    wanted = extract(service_dir)
    written: list[Path] = []
    for language_dir in languages(service_dir):
        have = load(language_dir)
        missing = [m for m in wanted.values() if m.msgid not in have]
        if not missing:
            continue
        by_file: dict[Path, list[Message]] = {}
        folder = language_dir / "LC_MESSAGES"
        for message in missing:
            admin = message.path.startswith("templates/admin/") and (folder / "admin.po").exists()
            by_file.setdefault(folder / ("admin.po" if admin else "messages.po"), []).append(
                message
            )
        for path, messages in by_file.items():
            if path.exists():
                with path.open("rb") as fp:
                    catalog = read_po(fp, locale=language_dir.name)
            else:
                catalog = Catalog(locale=language_dir.name, project="ClientPress")
            for message in messages:
                msgid = (message.msgid, message.plural) if message.plural else message.msgid
                catalog.add(msgid, "" if not message.plural else ("",) * catalog.num_plurals)
            with path.open("wb") as fp:
                write_po(fp, catalog, width=0, omit_header=False)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="add new msgids to the .po files")
    parser.add_argument("--root", type=Path, default=ROOT / "services")
    args = parser.parse_args(argv)
    services = [args.root / name for name in SERVICES if (args.root / name / "locale").is_dir()]
    if args.update:
        for service_dir in services:
            for path in update(service_dir):
                print(f"updated {path}")
    gaps = [gap for service_dir in services for gap in problems(service_dir)]
    for gap in gaps:
        print(gap, file=sys.stderr)
    if gaps:
        print(f"{len(gaps)} problem(s) in the catalogues", file=sys.stderr)
        return 1
    print(f"catalogues complete: {', '.join(s.name for s in services)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
