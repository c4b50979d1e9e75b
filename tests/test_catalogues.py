"""scripts/check_catalogues.py: a shipped language that lacks a message, or whose
translation changes a placeholder, fails the check; the shipped catalogues pass."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_catalogues", ROOT / "scripts" / "check_catalogues.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_catalogues", module)
    spec.loader.exec_module(module)
    return module


PO = """msgid ""
msgstr ""
"Language: de\\n"
"Content-Type: text/plain; charset=utf-8\\n"

{entries}
"""


def make_service(root: Path, entries: str) -> Path:
    service = root / "gateway"
    (service / "templates").mkdir(parents=True)
    (service / "words.py").write_text(
        'from gettext import gettext as N_\n\nGREETING = N_("Hello, {email}")\n'
    )
    (service / "templates" / "page.html").write_text(
        '<h1>{{ _("Welcome") }}</h1>\n<p>{% trans %}For <b>{{ name }}</b>.{% endtrans %}</p>\n'
    )
    folder = service / "locale" / "de" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "messages.po").write_text(PO.format(entries=entries))
    return service


COMPLETE = """msgid "Hello, {email}"
msgstr "Hallo, {email}"

msgid "Welcome"
msgstr "Willkommen"

msgid "For <b>%(name)s</b>."
msgstr "Für <b>%(name)s</b>."
"""


def test_a_complete_catalogue_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_service(tmp_path, COMPLETE)
    assert checker().main(["--root", str(tmp_path)]) == 0


def test_a_missing_or_empty_translation_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = COMPLETE.replace('msgstr "Willkommen"', 'msgstr ""').replace(
        'msgid "Hello, {email}"\nmsgstr "Hallo, {email}"\n', ""
    )
    make_service(tmp_path, entries)
    assert checker().main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "de " in err and "messages.po: no translation of 'Welcome'" in err
    assert "no translation of 'Hello, {email}' (words.py)" in err


def test_a_changed_placeholder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_service(tmp_path, COMPLETE.replace('"Für <b>%(name)s</b>."', '"Für <b>%(nom)s</b>."'))
    assert checker().main(["--root", str(tmp_path)]) == 1
    assert "placeholders ['%(nom)s'] differ from ['%(name)s']" in capsys.readouterr().err


def test_files_of_one_language_must_count_plurals_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A language's .po files are merged into one catalogue that counts plurals with the
    first file's rule: another rule in a second file would pick the wrong form."""
    service = make_service(tmp_path, COMPLETE)
    header = '"Plural-Forms: nplurals={n}; plural={rule};\\n"\n'
    folder = service / "locale" / "de" / "LC_MESSAGES"
    po = folder / "messages.po"
    po.write_text(
        po.read_text().replace(
            '"Language: de\\n"\n', '"Language: de\\n"\n' + header.format(n=2, rule="(n != 1)")
        )
    )
    admin = PO.format(entries="").replace(
        '"Language: de\\n"\n',
        '"Language: de\\n"\n' + header.format(n=3, rule="(n==1 ? 0 : n==2 ? 1 : 2)"),
    )
    (folder / "admin.po").write_text(admin)
    assert checker().main(["--root", str(tmp_path)]) == 1
    assert "de: the .po files' Plural-Forms differ" in capsys.readouterr().err
    (folder / "admin.po").write_text(
        admin.replace("nplurals=3; plural=(n==1 ? 0 : n==2 ? 1 : 2)", "nplurals=2; plural=(n != 1)")
    )
    assert checker().main(["--root", str(tmp_path)]) == 0


def test_update_adds_new_messages_and_keeps_translations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = make_service(tmp_path, 'msgid "Welcome"\nmsgstr "Willkommen"\n')
    assert checker().main(["--root", str(tmp_path), "--update"]) == 1  # new ones are empty
    po = (service / "locale" / "de" / "LC_MESSAGES" / "messages.po").read_text()
    assert 'msgid "Welcome"\nmsgstr "Willkommen"' in po
    assert 'msgid "Hello, {email}"\nmsgstr ""' in po


def test_the_shipped_catalogues_are_complete(capsys: pytest.CaptureFixture[str]) -> None:
    assert checker().main([]) == 0, capsys.readouterr().err
