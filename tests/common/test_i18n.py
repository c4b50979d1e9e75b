"""Languages: negotiation from Accept-Language and catalogues merged from .po files."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.errors import InvalidInput
from libs.common.i18n import (
    LANGUAGES,
    Catalogues,
    check_locale,
    check_time_zone,
    is_language,
    is_time_zone,
    language_name,
    negotiate,
    time_zones,
)


def test_negotiation_honours_quality_and_regional_tags() -> None:
    assert negotiate("de-AT,de;q=0.9,en;q=0.8") == "de"
    assert negotiate("ja, fr;q=0.5, en;q=0.7") == "en"
    assert negotiate("ja, fr;q=0.5") == "fr"
    assert negotiate("es;q=0, de;q=0.1") == "de"
    assert negotiate("ja", default="es") == "es"
    assert negotiate(None, default="fr") == "fr"
    assert negotiate("de;q=abc, fr") == "fr"


def test_languages_are_named_in_their_own_words() -> None:
    assert LANGUAGES == ("en", "de", "fr", "es")
    assert [language_name(code) for code in LANGUAGES] == [
        "English",
        "Deutsch",
        "Français",
        "Español",
    ]
    assert is_language("de") and not is_language("xx") and not is_language(None)


def _po(path: Path, pairs: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
    for msgid, msgstr in pairs.items():
        body += f'msgid "{msgid}"\nmsgstr "{msgstr}"\n\n'
    path.write_text(body, encoding="utf-8")


def test_catalogues_merge_every_po_file_of_a_language(tmp_path: Path) -> None:
    _po(tmp_path / "de" / "LC_MESSAGES" / "messages.po", {"Log In": "Anmelden"})
    _po(tmp_path / "de" / "LC_MESSAGES" / "admin.po", {"Invite Client": "Kunden einladen"})
    catalogues = Catalogues(tmp_path)
    german = catalogues.get("de")
    assert german.gettext("Log In") == "Anmelden"
    assert german.gettext("Invite Client") == "Kunden einladen"
    assert german.gettext("Unknown") == "Unknown"
    # English is the source language; a language without files falls back to it.
    assert catalogues.get("en").gettext("Log In") == "Log In"
    assert catalogues.get("fr").gettext("Log In") == "Log In"


def test_one_language_rule_for_every_service() -> None:
    assert check_locale("de") == "de"
    assert check_locale(None) is None
    for refused in ("it", "DE", "", "de-AT"):
        with pytest.raises(InvalidInput) as caught:
            check_locale(refused)
        assert caught.value.code == "invalid_locale"
        assert caught.value.message == "Language (locale) must be one of en, de, fr, es."
    with pytest.raises(InvalidInput) as caught:
        check_locale("it", code="invalid_default_locale")
    assert caught.value.code == "invalid_default_locale"


def test_one_time_zone_rule_for_every_service() -> None:
    assert check_time_zone("Europe/Berlin") == "Europe/Berlin"
    assert check_time_zone(None) is None
    assert is_time_zone("UTC") and is_time_zone("EST5EDT")
    for refused in ("Mars/Olympus", "europe/berlin", "", "+02:00"):
        assert not is_time_zone(refused)
        with pytest.raises(InvalidInput) as caught:
            check_time_zone(refused)
        assert caught.value.code == "invalid_time_zone"
    assert not is_time_zone(None) and not is_time_zone(3)
    offered = time_zones()
    assert "Europe/Berlin" in offered and "UTC" in offered and "EST5EDT" not in offered
    assert list(offered) == sorted(offered)
