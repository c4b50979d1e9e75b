"""Pages in the reader's language and time zone (issue 17).

The language of a page: the logged-in account's ``locale``, else (on an invitation link's
pages) the invitation's ``locale``, else the browser's ``Accept-Language``, else Settings →
Branding's ``default_locale``, else English. Times: the account's ``time_zone``, else the
branding's, else UTC.

Templates call ``_``/``gettext``/``ngettext`` (Jinja's i18n extension, newstyle). They are
environment globals that read the language of the request being rendered from a context
variable, so macros imported without context translate too. Python code marks words with
``N_`` (kept as English until shown) and translates them with :func:`gettext` at render.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from babel.dates import format_datetime
from babel.numbers import format_decimal
from markupsafe import Markup

from libs.common.i18n import (
    DEFAULT_LANGUAGE,
    LANGUAGES,
    Catalogues,
    is_language,
    is_time_zone,
    language_name,
    negotiate,
)
from libs.common.i18n import N_ as N_  # re-exported: the gateway's modules mark messages with it

LOCALE_DIR = Path(__file__).parent / "locale"
CATALOGUES = Catalogues(LOCALE_DIR)

_LANGUAGE: contextvars.ContextVar[str] = contextvars.ContextVar(
    "gateway_language", default=DEFAULT_LANGUAGE
)
_ZONE: contextvars.ContextVar[str] = contextvars.ContextVar("gateway_zone", default="UTC")


def choose_language(
    user: Mapping[str, Any] | None,
    accept_language: str | None,
    brand: Mapping[str, Any] | None,
    invitation_locale: str | None = None,
) -> str:
    account = (user or {}).get("locale")
    if is_language(account):
        return str(account)
    if is_language(invitation_locale):
        return str(invitation_locale)
    default = (brand or {}).get("default_locale")
    fallback = str(default) if is_language(default) else DEFAULT_LANGUAGE
    return negotiate(accept_language, fallback)


def choose_zone(user: Mapping[str, Any] | None, brand: Mapping[str, Any] | None) -> str:
    for zone in ((user or {}).get("time_zone"), (brand or {}).get("time_zone")):
        if is_time_zone(zone):
            return zone
    return "UTC"


def use(language: str, zone: str = "UTC") -> None:
    """The language and zone of what this task renders next."""
    _LANGUAGE.set(language)
    _ZONE.set(zone)


def current_language() -> str:
    return _LANGUAGE.get()


def gettext(message: str, **variables: Any) -> str:
    text = CATALOGUES.get(_LANGUAGE.get()).gettext(message)
    return text % variables if variables else text


def ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
    text = CATALOGUES.get(_LANGUAGE.get()).ngettext(singular, plural, n)
    variables.setdefault("num", n)
    return text % variables


# --- the template functions (Jinja's newstyle gettext, bound to the request's language) --
@jinja2.pass_context
def _template_gettext(context: jinja2.runtime.Context, message: str, **variables: Any) -> str:
    text = CATALOGUES.get(_LANGUAGE.get()).gettext(message)
    if context.eval_ctx.autoescape:
        text = Markup(text)  # noqa: S704 - the catalogue's own words, as Jinja's i18n does
    return text % variables if variables else text


@jinja2.pass_context
def _template_ngettext(
    context: jinja2.runtime.Context, singular: str, plural: str, n: int, **variables: Any
) -> str:
    variables.setdefault("num", n)
    text = CATALOGUES.get(_LANGUAGE.get()).ngettext(singular, plural, n)
    if context.eval_ctx.autoescape:
        text = Markup(text)  # noqa: S704 - the catalogue's own words, as Jinja's i18n does
    return text % variables


def when(value: str | None) -> str:
    """An ISO timestamp for people, in the reader's zone: "2026-11-25 10:51 UTC" in
    English, Babel's medium format for the page language otherwise ("25.11.2026, 11:51:00
    CET")."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    zone = _ZONE.get()
    local = moment.astimezone(ZoneInfo(zone))
    language = _LANGUAGE.get()
    if language == DEFAULT_LANGUAGE:
        return local.strftime("%Y-%m-%d %H:%M ") + _zone_name(local, zone)
    text = format_datetime(local, format="medium", tzinfo=ZoneInfo(zone), locale=language)
    return f"{text} {_zone_name(local, zone)}"


def _zone_name(local: datetime, zone: str) -> str:
    """The zone's abbreviation (CET, PST), or its offset from UTC where the zone database
    has no abbreviation: "UTC-03" in São Paulo, where a bare "-03" reads as a typo."""
    name = local.tzname() or zone
    return f"UTC{name}" if name[:1] in "+-" else name


def number(value: int) -> str:
    """A count in the page language's format: 10,000 in English, 10.000 in German."""
    return format_decimal(value, locale=_LANGUAGE.get())


def install(env: jinja2.Environment) -> None:
    env.add_extension("jinja2.ext.i18n")
    env.globals["_"] = _template_gettext
    env.globals["gettext"] = _template_gettext
    env.globals["ngettext"] = _template_ngettext
    env.newstyle_gettext = True  # type: ignore[attr-defined]
    env.globals["page_language"] = current_language
    # Every Language picker's options: (code, the language's own name), in LANGUAGES order.
    env.globals["languages"] = tuple((code, language_name(code)) for code in LANGUAGES)
    env.filters["when"] = when
    env.filters["number"] = number
