"""Languages: the shipped locales, message catalogues and the choice of a reader's language.

Each service keeps its catalogues as gettext `.po` files under
`<package>/locale/<lang>/LC_MESSAGES/*.po`, merged into one catalogue per language. English
is the source language: its strings are the msgids, so it needs no catalogue. The `.po`
files are compiled in memory when a service starts, so there is no build step and no `.mo`
file to forget.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

# The languages we ship complete, in the order a picker lists them.
LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es")
DEFAULT_LANGUAGE = "en"


def language_name(code: str) -> str:
    """The language's own name for itself ("Deutsch"), as a picker shows it."""
    name = Locale.parse(code).get_display_name(code) or code
    return name[:1].upper() + name[1:]


def is_language(code: str | None) -> bool:
    return code in LANGUAGES


def negotiate(accept_language: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """The shipped language a browser's `Accept-Language` header prefers most, else default.

    Quality values are honoured; a regional tag ("de-AT") matches its language ("de").
    """
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        language = tag.strip().lower().split("-")[0]
        if language and quality > 0:
            ranked.append((-quality, position, language))
    for _, _, language in sorted(ranked):
        if language in LANGUAGES:
            return language
    return default


class Catalogues:
    """A service's translations, one per shipped language, loaded once."""

    def __init__(self, locale_dir: Path) -> None:
        self.locale_dir = locale_dir

    @cache  # noqa: B019 - one instance per service for the process's life
    def get(self, language: str) -> NullTranslations:
        """Every ``.po`` file of the language's ``LC_MESSAGES`` merged into one catalogue
        (a service may split its messages, e.g. public pages and staff screens)."""
        folder = self.locale_dir / language / "LC_MESSAGES"
        paths = sorted(folder.glob("*.po")) if language != DEFAULT_LANGUAGE else []
        merged: Translations | None = None
        for path in paths:
            with path.open("rb") as fp:
                catalog = read_po(fp, locale=language)
            buffer = io.BytesIO()
            write_mo(buffer, catalog)
            buffer.seek(0)
            translations = Translations(fp=buffer)
            if merged is None:
                merged = translations
            else:
                merged.merge(translations)
        return merged if merged is not None else NullTranslations()
