"""Settings → Branding (the page and /api/v1/settings/branding, forwarded to the mailer,
which keeps the branding: docs/design.md "Branding"), the branding every page shows
(loaded by branding_middleware), and the public /branding/logo and /branding/theme.css."""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy
from pydantic import BaseModel, ConfigDict, Field

from libs.common.errors import InvalidInput, TooLarge
from libs.common.i18n import (
    LANGUAGE_MESSAGE,
    TIME_ZONE_MESSAGE,
    is_language,
    is_time_zone,
    time_zones,
)
from libs.common.web import json_response, read_json

from ..answers import BrandingAnswer

# A versioned URL (?v= the current etag or colour) names one picture or colour for good,
# as a static file's digest does.
from ..assets import IMMUTABLE, REVALIDATE
from ..domain import LOGO_TOO_BIG, MAX_LOGO_BYTES, theme_css, theme_version
from ..i18n import N_
from ..rendering import Handler, form_str, is_api, render, see_other
from ..state import UPSTREAM, req_state
from ..upstream import Branding
from .api import API

PAGE = "/admin/settings/branding"
LOGO_FORM = PAGE + "/logo"
FIELDS = ("agency_name", "accent_colour", "reply_to", "footer_text")
# The agency's default language and time zone: a select and a zone name, checked here so
# the form answers in its own words (the mailer checks them again).
LOCALE_FIELDS = ("default_locale", "time_zone")

routes = web.RouteTableDef()


def _branding(request: web.Request) -> Branding:
    return request.app[UPSTREAM].brand()


@web.middleware
async def branding_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Pages get the branding before anything renders them (error pages too). The mailer
    away must not take pages down: they show the last branding this replica saw."""
    path = request.path
    if not is_api(request) and not path.startswith(("/static/", "/branding/")):
        req_state(request).brand = await _branding(request).for_page()
    return await handler(request)


# --- public: the logo and the accent's stylesheet ----------------------------------------
def _cached(request: web.Request, body: bytes, content_type: str, etag: str) -> web.Response:
    tag = f'"{etag}"'
    versioned = request.query.get("v") in (etag, etag.lstrip("#"))
    headers = {"ETag": tag, "Cache-Control": IMMUTABLE if versioned else REVALIDATE}
    if tag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, headers=headers)


@routes.get("/branding/logo")
async def logo(request: web.Request) -> web.StreamResponse:
    current = await _branding(request).current()
    etag = current.get("logo_etag")
    if not etag:
        raise web.HTTPNotFound()
    tag = f'"{etag}"'
    if tag in request.headers.get("If-None-Match", ""):
        return _cached(request, b"", "image/png", etag)
    found = await _branding(request).logo(etag)
    return _cached(
        request, base64.b64decode(found["content"]), found["content_type"], found["etag"]
    )


@routes.get("/branding/theme.css")
async def theme(request: web.Request) -> web.StreamResponse:
    current = await _branding(request).current()
    accent = str(current.get("accent_colour") or "")
    return _cached(request, theme_css(accent).encode(), "text/css", theme_version(accent))


# --- Settings → Branding ------------------------------------------------------------------
def _page(
    request: web.Request,
    current: BrandingAnswer,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    values = form or {
        **{name: str(current.get(name) or "") for name in FIELDS},
        "default_locale": str(current.get("default_locale") or "en"),
        "time_zone": str(current.get("time_zone") or "UTC"),
    }
    context = {
        "form": values,
        "time_zones": time_zones(),
        "logo_etag": current.get("logo_etag") or "",
        "errors": errors or {},
    }
    return render(request, "admin/branding.html", context, status=status)


@routes.get(PAGE)
async def branding_form(request: web.Request) -> web.StreamResponse:
    return _page(request, await _branding(request).current())


@routes.post(PAGE)
async def save_branding(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    values = {name: form_str(form, name, 2000) for name in FIELDS}
    # Left out (an older form, a script): unchanged.
    locale = {name: form_str(form, name, 100).strip() for name in LOCALE_FIELDS if name in form}
    errors = {}
    if "default_locale" in locale and not is_language(locale["default_locale"]):
        errors["default_locale"] = LANGUAGE_MESSAGE
    if "time_zone" in locale and not is_time_zone(locale["time_zone"]):
        errors["time_zone"] = TIME_ZONE_MESSAGE
    current = await _branding(request).current()
    shown = {**_filled({}, current), **values, **locale}
    if errors:
        return _page(request, current, shown, errors, status=422)
    # Only a Language or Time Zone that changed is sent: "unchanged" is what the mailer
    # already has, whatever it was when the page was opened.
    unchanged = _filled({}, current)
    changes = {name: value for name, value in locale.items() if value != unchanged[name]}
    try:
        await _branding(request).update({**values, **changes})
    except InvalidInput as exc:
        field = str(exc.details.get("field", "form"))
        current = await _branding(request).current()
        return _page(request, current, shown, {field: exc.message}, exc.status)
    return see_other(request, PAGE, flash="branding_saved")


def _filled(shown: dict[str, str], current: BrandingAnswer) -> dict[str, str]:
    """The form as posted, with the current Language and Time Zone where it had none."""
    return {
        "default_locale": str(current.get("default_locale") or "en"),
        "time_zone": str(current.get("time_zone") or "UTC"),
        **shown,
    }


def _upload(form: MultiDictProxy[Any]) -> bytes:
    field = form.get("logo")
    if not isinstance(field, web.FileField):
        raise InvalidInput(N_("Choose a PNG or JPEG file for the Logo."), code="invalid_logo")
    content: bytes = field.file.read(MAX_LOGO_BYTES + 1)
    return content


@routes.post(LOGO_FORM)
async def upload_logo(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    client = _branding(request)
    try:
        content = _upload(form)
        if len(content) > MAX_LOGO_BYTES:
            raise TooLarge(LOGO_TOO_BIG)
        await client.set_logo(base64.b64encode(content).decode())
    except (InvalidInput, TooLarge) as exc:
        return _page(request, await client.current(), None, {"logo": exc.message}, exc.status)
    return see_other(request, PAGE, flash="logo_uploaded")


@routes.post(LOGO_FORM + "/remove")
async def remove_logo(request: web.Request) -> web.StreamResponse:
    await request.post()
    await _branding(request).remove_logo()
    return see_other(request, PAGE, flash="logo_removed")


# --- /api/v1/settings/branding ------------------------------------------------------------
class BrandingView(BaseModel):
    agency_name: str = Field(
        description="Shown in page titles and headers, and as the"
        " emails' From name, subjects and bodies; empty: the site's host"
    )
    accent_colour: str = Field(description="#rrggbb of buttons and links; empty: built-in")
    reply_to: str = Field(description="Reply-To of invitation emails; empty: none")
    footer_text: str = Field(description="Plain text under every page and email")
    default_locale: str = Field(
        default="en",
        description="The agency's language (en, de, fr, es): emails, and pages when the"
        " reader's account and browser name none of ours; an invitation may choose another",
    )
    time_zone: str = Field(
        default="UTC",
        description="IANA time zone name (e.g. Europe/Berlin) of the times in emails, and on"
        " pages for readers without their own",
    )
    logo_etag: str | None = Field(description="Names the logo at /branding/logo; null: none")
    logo_type: str | None = None


class BrandingChange(BaseModel):
    """Fields left out are unchanged; an empty string unsets one."""

    model_config = ConfigDict(extra="forbid")

    agency_name: str | None = Field(default=None, max_length=1000)
    accent_colour: str | None = Field(
        default=None,
        max_length=100,
        description="#rrggbb; refused (422 invalid_accent_colour) when white text on it has"
        " a contrast ratio under 4.5:1 (WCAG AA)",
    )
    reply_to: str | None = Field(default=None, max_length=1000)
    footer_text: str | None = Field(default=None, max_length=5000)
    default_locale: str | None = Field(
        default=None, max_length=100, description="en, de, fr or es (422 invalid_default_locale)"
    )
    time_zone: str | None = Field(
        default=None,
        max_length=100,
        description="An IANA time zone name such as Europe/Berlin (422 invalid_time_zone)",
    )


class LogoUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str = Field(
        min_length=1,
        max_length=(MAX_LOGO_BYTES * 4) // 3 + 8,
        description="Base64 of a PNG or JPEG file, at most 1 MB and 2000 pixels a side;"
        " re-encoded without its metadata",
    )


@API.get("/settings/branding", "Branding settings", response=BrandingView)
async def get_branding(request: web.Request) -> web.StreamResponse:
    return json_response(await _branding(request).current())


@API.put(
    "/settings/branding",
    "Change Branding settings (fields left out are unchanged)",
    body=BrandingChange,
    response=BrandingView,
    errors=[
        "422 invalid_agency_name",
        "422 invalid_accent_colour",
        "422 invalid_reply_to",
        "422 invalid_footer_text",
        "422 invalid_default_locale",
        "422 invalid_time_zone",
    ],
)
async def put_branding(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, BrandingChange)
    changes = body.model_dump(exclude_none=True)
    if "default_locale" in changes and not is_language(changes["default_locale"]):
        raise InvalidInput(LANGUAGE_MESSAGE, code="invalid_default_locale")
    if "time_zone" in changes and not is_time_zone(changes["time_zone"]):
        raise InvalidInput(TIME_ZONE_MESSAGE, code="invalid_time_zone")
    return json_response(await _branding(request).update(changes))


@API.put(
    "/settings/branding/logo",
    "Upload the logo",
    body=LogoUpload,
    response=BrandingView,
    errors=["413 too_large", "422 invalid_logo"],
)
async def put_logo(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, LogoUpload, limit=(MAX_LOGO_BYTES * 4) // 3 + 1024)
    return json_response(await _branding(request).set_logo(body.content))


@API.delete("/settings/branding/logo", "Remove the logo", response=BrandingView)
async def delete_logo(request: web.Request) -> web.StreamResponse:
    return json_response(await _branding(request).remove_logo())
