"""Page rendering, redirects with flash messages, and the error middleware that answers
HTML pages for the browser and JSON under /api."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from libs.common.errors import DomainError, NotFound, RateLimited, Unavailable
from libs.common.logging import get_logger
from libs.common.protocol import BodyTimeout, UnsupportedTransferEncoding
from libs.common.web import (
    UNAVAILABLE_ERRORS,
    body_too_large,
    error_response,
    http_error_headers,
)

from . import i18n
from .answers import UserAnswer
from .domain import cookie_token, flash_text, mask_csrf, page_brand
from .i18n import N_
from .state import SETTINGS, req_state
from .upstream import NO_BRANDING

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refusal(NamedTuple):
    """An answer the middleware gives the same way each time: the page's title and message
    (English msgids), or the JSON error's code and message under /api."""

    status: int
    code: str
    title: str
    message: str
    headers: dict[str, str] | None = None


NOT_FOUND = Refusal(404, "not_found", N_("Page not found"), N_("We couldn't find that page."))
UNAVAILABLE = Refusal(
    503,
    "unavailable",
    N_("Temporarily unavailable"),
    N_("This page is temporarily unavailable. Please try again in a moment."),
    {"Retry-After": "5"},
)
# Identity's hash queue is full: a burst, not an outage.
BUSY = Refusal(
    503,
    "busy",
    N_("We're busy right now"),
    N_("Too many people are signing in at once. Please try again in a few seconds."),
    {"Retry-After": "5"},
)
# Unavailable answers the JSON API passes on as they came (documented in its OpenAPI),
# rather than as the generic ``unavailable``: the mailer can't bind a new webhook
# endpoint's events while its broker connection is away or blocked.
API_UNAVAILABLE = frozenset({"broker_unavailable"})
# A body slower than HTTP_BODY_TIMEOUT_SECONDS (libs/common/protocol.py); the API answers
# the library's own words.
BODY_TIMEOUT = Refusal(
    408,
    "body_timeout",
    N_("Please try again"),
    N_("The form took too long to arrive. Check your connection and send it again."),
)
# A page's form over the app's 64 KiB or aiohttp's 1,000 fields (the larger forms have
# their own words: security.LARGE_FORMS).
FORM_TOO_LARGE = Refusal(
    413,
    "body_too_large",
    N_("This form is too large"),
    N_(
        "The form holds more than this page takes. Go back, shorten what you entered and"
        " send it again."
    ),
)
INTERNAL = Refusal(
    500,
    "internal",
    N_("Something went wrong"),
    N_("Something went wrong on our side. Please try again in a moment."),
)


def is_api(request: web.Request) -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def current_user(request: web.Request) -> UserAnswer | None:
    return req_state(request).user


# Context values render() translates: messages the handlers pass in English.
TRANSLATED = ("title", "message", "error", "done")


def page_language(request: web.Request) -> str:
    """Chooses this page's language and zone (i18n.py) and makes them the ones rendered."""
    state = req_state(request)
    language = i18n.choose_language(
        state.user,
        request.headers.get("Accept-Language"),
        state.brand,
        state.invitation_locale,
    )
    i18n.use(language, i18n.choose_zone(state.user, state.brand))
    return language


def render(
    request: web.Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> web.Response:
    # Rendering below is synchronous: the language set here is the one this page uses.
    language = page_language(request)
    ctx: dict[str, Any] = {
        "user": current_user(request),
        # Masked afresh for every page (domain.mask_csrf): safe to compress.
        "csrf_token": mask_csrf(req_state(request).csrf),
        "flash": None,
        "site": request.app[SETTINGS].public_url.host or "ClientPress",
        "brand": page_brand(req_state(request).brand or NO_BRANDING),
    }
    flash_cookie = request.app[SETTINGS].flash_cookie
    raw = request.cookies.get(flash_cookie)
    flash = cookie_token(raw, longest=4096)  # we set it quoted: ASCII
    if flash:
        key, _, email = unquote(flash).partition("|")
        ctx["flash"] = flash_text(key, email)
    ctx.update(context or {})
    for key in TRANSLATED:  # the page's words from the code (English msgids), translated
        if isinstance(ctx.get(key), str):
            ctx[key] = i18n.gettext(ctx[key])
    errors = ctx.get("errors")
    if isinstance(errors, dict):  # a form's messages (English msgids) in the page language
        ctx["errors"] = {k: i18n.gettext(v) if isinstance(v, str) else v for k, v in errors.items()}
    response = aiohttp_jinja2.render_template(template, request, ctx, status=status)
    if raw:
        response.del_cookie(flash_cookie, path="/", secure=request.app[SETTINGS].secure_cookies)
    response.headers["Content-Language"] = language
    response.headers["Vary"] = "Accept-Language, Cookie"
    return response


def see_other(
    request: web.Request, location: str, flash: str | None = None, email: str = ""
) -> web.Response:
    response = web.Response(status=303, headers={"Location": location})
    if flash is not None:
        settings = request.app[SETTINGS]
        response.set_cookie(
            settings.flash_cookie,
            quote(f"{flash}|{email}", safe="@"),
            max_age=60,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=settings.secure_cookies,
        )
    return response


def error_page(
    request: web.Request,
    status: int,
    title: str,
    message: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    response = render(
        request, "error.html", {"title": title, "message": message, **extra}, status=status
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _answer(
    request: web.Request,
    status: int,
    code: str,
    title: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> web.Response:
    if is_api(request):
        return error_response(status, code, message, headers, details)
    return error_page(request, status, title, message, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            if not is_api(request):
                return _answer(request, *FORM_TOO_LARGE)
            refused = body_too_large(request.client_max_size)
            return error_response(refused.status, refused.code, refused.message)
        if exc.status == 404:
            return _answer(request, *NOT_FOUND)
        code = exc.reason.lower().replace(" ", "_")
        headers = http_error_headers(exc)
        return _answer(request, exc.status, code, exc.reason, exc.reason, headers)
    except RateLimited as exc:
        return _answer(
            request,
            429,
            exc.code,
            N_("Too many attempts"),
            exc.message,
            {"Retry-After": str(exc.retry_after)},
            exc.details,
        )
    except NotFound as exc:
        if is_api(request):
            return error_response(404, exc.code, exc.message)
        return _answer(request, *NOT_FOUND)
    except BodyTimeout as exc:
        if is_api(request):
            return error_response(exc.status, exc.code, exc.message)
        return _answer(request, *BODY_TIMEOUT)
    except UnsupportedTransferEncoding as exc:
        # The gateway's own 501 (protocol.py), not an upstream's failure.
        return _answer(request, exc.status, exc.code, N_("Something is not right"), exc.message)
    except Unavailable as exc:
        log.warning("upstream_unavailable", code=exc.code)
        if exc.code == "busy":
            return _answer(request, *BUSY)
        if exc.code in API_UNAVAILABLE and is_api(request):
            # A refusal the API documents (POST /api/v1/webhooks): its code and words.
            return error_response(503, exc.code, exc.message, {"Retry-After": "5"})
        return _answer(request, *UNAVAILABLE)
    except DomainError as exc:
        if exc.status >= 500:
            log.warning("upstream_error", code=exc.code, status=exc.status)
            return _answer(request, *UNAVAILABLE)
        if exc.code == "csrf_failed":
            # A token that no longer matches (the form expired), or an Origin not ours,
            # which no retry mends: each says which.
            title = getattr(exc, "title", N_("Please try again"))
            return _answer(request, 403, exc.code, title, exc.message)
        return _answer(
            request,
            exc.status,
            exc.code,
            N_("Something is not right"),
            exc.message,
            dict(exc.headers) or None,
            exc.details,
        )
    except UNAVAILABLE_ERRORS as exc:
        log.warning("dependency_unavailable", error=type(exc).__name__)
        return _answer(request, *UNAVAILABLE)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return _answer(request, *INTERNAL)


def form_str(form: MultiDictProxy[Any], name: str, limit: int = 4096) -> str:
    """One text field of a posted form, cut to a sane length ('' when absent). A NUL,
    which no service stores and nobody sees, is dropped from what a person typed or pasted."""
    value = form.get(name)
    return value.replace("\x00", "")[:limit] if isinstance(value, str) else ""
