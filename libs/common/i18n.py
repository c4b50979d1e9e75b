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
from typing import TypeGuard
from zoneinfo import available_timezones

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

from .errors import InvalidInput

# The languages we ship complete, in the order a picker lists them.
LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es")
DEFAULT_LANGUAGE = "en"


def N_(message: str) -> str:
    """Marks a message for extraction into the catalogues (scripts/check_catalogues.py);
    it stays English until it is shown, and is translated then."""
    return message


def language_name(code: str) -> str:
    """The language's own name for itself ("Deutsch"), as a picker shows it."""
    name = Locale.parse(code).get_display_name(code) or code
    return name[:1].upper() + name[1:]


def is_language(code: str | None) -> bool:
    return code in LANGUAGES


# The refusals every service and form gives (the gateway's catalogues translate them).
LANGUAGE_MESSAGE = N_("Language (locale) must be one of en, de, fr, es.")  # LANGUAGES
TIME_ZONE_MESSAGE = N_("Time zone must be an IANA time zone name such as Europe/Berlin.")


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def is_time_zone(name: object) -> TypeGuard[str]:
    """An IANA time zone name this machine's tz database knows ("Europe/Berlin", "UTC")."""
    return isinstance(name, str) and name in _zones()


@cache
def time_zones() -> tuple[str, ...]:
    """The names a Time Zone picker offers, sorted: regions and UTC (no legacy aliases
    such as "EST5EDT" offered, though :func:`is_time_zone` accepts them)."""
    return tuple(sorted(z for z in _zones() if "/" in z or z == "UTC"))


def check_locale(locale: str | None, *, code: str = "invalid_locale") -> str | None:
    """A shipped language, or None (not chosen); anything else is refused."""
    if locale is not None and not is_language(locale):
        raise InvalidInput(LANGUAGE_MESSAGE, code=code)
    return locale


def check_time_zone(zone: str | None, *, code: str = "invalid_time_zone") -> str | None:
    """An IANA time zone name, or None (not chosen); anything else is refused."""
    if zone is not None and not is_time_zone(zone):
        raise InvalidInput(TIME_ZONE_MESSAGE, code=code)
    return zone


def weighted(header: str | None) -> list[tuple[str, float]]:
    """An ``Accept-*`` header's items in order, lower-cased, each with its quality (RFC 9110
    12.4.2: 1 when not given; a ``q`` that isn't a number counts as 0)."""
    items: list[tuple[str, float]] = []
    for part in (header or "").split(","):
        item, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        items.append((item.strip().lower(), quality))
    return items


def negotiate(accept_language: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """The shipped language a browser's `Accept-Language` header prefers most, else default.

    Quality values are honoured; a regional tag ("de-AT") matches its language ("de").
    """
    ranked: list[tuple[float, int, str]] = []
    for position, (tag, quality) in enumerate(weighted(accept_language)):
        language = tag.split("-")[0]
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
