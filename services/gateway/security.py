"""Request security: the session (from identity, through this replica's short cache that
identity's revocations empty: cache.py), CSRF and Origin checks, role gates for /admin
and /api/v1, security headers, session cookies, the client's address and rate limits
(counted in limits.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from urllib.parse import quote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDictProxy

from libs.common.actor import Actor, set_actor
from libs.common.email import typed_email_key
from libs.common.errors import (
    DomainError,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from libs.common.logging import get_logger
from libs.common.passwords import PASSWORD_FIELD
from libs.common.text import has_lone_surrogate

from .domain import (
    CONTENT_TOO_LONG,
    INTEGRATION_KEY_PREFIX,
    LOGO_FORM_LIMIT,
    LOGO_TOO_BIG,
    PORTAL_BODY_LIMIT,
    address_key,
    api_key_matches,
    bearer_key,
    client_address,
    cookie_token,
    could_be_integration_key,
    csrf_matches,
    forwarded_hops,
    new_csrf_token,
    origin_allowed,
)
from .i18n import N_
from .rendering import Handler, form_str, is_api
from .state import (
    LIMITS,
    SETTINGS,
    TRUSTED_PROXIES,
    UPSTREAM,
    req_state,
)

log = get_logger(__name__)

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# No session or CSRF cookie needed: static files, and the branding's logo and stylesheet.
PLAIN_PATHS = ("/static/", "/branding/")
# Page forms allowed more than the app's 64 KiB (by route), and what a bigger one is told:
# the logo upload and a portal's Content (domain.py).
LARGE_FORMS: dict[str, tuple[int, str]] = {
    "/admin/settings/branding/logo": (LOGO_FORM_LIMIT, LOGO_TOO_BIG),
    "/admin/portals/new": (PORTAL_BODY_LIMIT, CONTENT_TOO_LONG),
    "/admin/portals/{id}": (PORTAL_BODY_LIMIT, CONTENT_TOO_LONG),
}
# The API's description and its reference page: public, like any published contract.
PUBLIC_API = frozenset({"/api/v1/openapi.json", "/api/docs"})
NO_REFERRER = ("/invitations/accept", "/reset-password")
# Answers only our own pages' scripts read: the editor's user search (app.js). Like the
# API's, another site's link or script must not get them with the person's cookies.
SCRIPT_ONLY = frozenset({"/admin/users/search"})
# Sec-Fetch-Site of a request another site made the browser send (a sibling subdomain
# counts as another site: the cookies are __Host- under https).
ELSEWHERE = frozenset({"cross-site", "same-site"})
HSTS = "max-age=31536000"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# A portal's page shows its Content, whose pictures the agency may host elsewhere
# (![plan](https://…)): https only, so an https site never loads one in the clear.
PORTAL_CSP = CSP.replace("img-src 'self' data:", "img-src 'self' data: https:")


def _plain(request: web.Request) -> bool:
    return request.path.startswith(PLAIN_PATHS)


def _read_by_scripts(request: web.Request) -> bool:
    """The API (but its public documents) and SCRIPT_ONLY: JSON for programs and our own
    pages' scripts, never a page another site links to."""
    if is_api(request):
        return request.path not in PUBLIC_API
    return request.path in SCRIPT_ONLY


class CsrfFailed(Forbidden):
    """A form whose token no longer matches: it expired, and a reload mends it. ``title``:
    the page's heading (rendering.error_middleware)."""

    code = "csrf_failed"
    title = N_("Please try again")


class OriginRefused(CsrfFailed):
    """A form posted from another origin than PUBLIC_URL's, which no retry mends."""

    title = N_("Request refused")


class UnreadableForm(DomainError, status=400, code="unreadable_form"):
    """A form body that isn't what a browser sends: bytes that aren't UTF-8, a charset
    nobody knows, a multipart body cut short."""


UNREADABLE_FORM = N_(
    "The form could not be read: it was not sent as UTF-8 text. Reload the page and try again."
)
MALFORMED_FORM = N_(
    "The form could not be read: it was not sent the way a browser sends a form. Reload the"
    " page and try again."
)


async def read_form(
    request: web.Request,
) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The posted form (parsed once: the handler's own request.post() gets it again)."""
    try:
        form = await request.post()
    # aiohttp lets each of these through, a 500: text not in its charset, a charset
    # nobody knows; a multipart part cut short or with a header over 8 KiB
    # (HttpProcessingError), without a name, holding another multipart body or bad base64
    # (ValueError), in a transfer coding it doesn't know (RuntimeError).
    except (UnicodeDecodeError, LookupError):
        raise UnreadableForm(UNREADABLE_FORM) from None
    except (ValueError, HttpProcessingError, RuntimeError):
        raise UnreadableForm(MALFORMED_FORM) from None
    # Text in a charset that decodes to half a UTF-16 pair (libs.common.text.has_lone_surrogate).
    if any(
        has_lone_surrogate(name) or (isinstance(value, str) and has_lone_surrogate(value))
        for name, value in form.items()
    ):
        raise UnreadableForm(UNREADABLE_FORM)
    return form


# The scope an integration key needs for each /api/v1 route (method, canonical path). A
# route missing here answers only administrators and the bootstrap key (GATEWAY_API_KEY),
# so a route added without a scope is safe by default.
API_SCOPES: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/portals"): "portals:read",
    ("POST", "/api/v1/portals"): "portals:write",
    ("GET", "/api/v1/portals/{id}"): "portals:read",
    ("PATCH", "/api/v1/portals/{id}"): "portals:write",
    ("PUT", "/api/v1/portals/{id}/client"): "portals:write",
    ("PUT", "/api/v1/portals/{id}/sub-clients"): "portals:write",
    ("POST", "/api/v1/portals/{id}/invitations"): "invitations:write",
    ("POST", "/api/v1/portals/{id}/invitations/batch"): "invitations:write",
    ("GET", "/api/v1/invitations"): "invitations:read",
    ("POST", "/api/v1/invitations"): "invitations:write",
    ("GET", "/api/v1/invitations/{id}"): "invitations:read",
    ("POST", "/api/v1/invitations/{id}/resend"): "invitations:write",
    ("POST", "/api/v1/invitations/{id}/revoke"): "invitations:write",
    ("GET", "/api/v1/users"): "users:read",
}
# Routes no integration key may call: administrators and the bootstrap key only. Every
# /api/v1 route is in exactly one of the two tables (tests/security/test_api_keys.py).
ADMIN_ONLY_API: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/api/v1/activity"),
        ("POST", "/api/v1/users/{id}/erase"),
        ("GET", "/api/v1/settings/access"),
        ("PUT", "/api/v1/settings/access"),
        ("GET", "/api/v1/settings/branding"),
        ("PUT", "/api/v1/settings/branding"),
        ("PUT", "/api/v1/settings/branding/logo"),
        ("DELETE", "/api/v1/settings/branding/logo"),
        ("POST", "/api/v1/keys"),
        ("GET", "/api/v1/keys"),
        ("DELETE", "/api/v1/keys/{id}"),
        ("POST", "/api/v1/staff-invitations"),
        ("GET", "/api/v1/staff-invitations"),
        ("GET", "/api/v1/webhooks"),
        ("POST", "/api/v1/webhooks"),
        ("DELETE", "/api/v1/webhooks/{id}"),
        ("POST", "/api/v1/webhooks/{id}/rotate-secret"),
        ("GET", "/api/v1/webhooks/{id}/deliveries"),
        ("POST", "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver"),
    }
)
BOOTSTRAP_KEY_NAME = "bootstrap"


def route_key(request: web.Request) -> tuple[str, str]:
    resource = request.match_info.route.resource
    return request.method, resource.canonical if resource is not None else request.path


async def _authenticate_key(request: web.Request) -> None:
    """An /api request's bearer key: the bootstrap key (GATEWAY_API_KEY, every scope) or a
    live integration key, whose scopes identity answers. A key that isn't live is refused
    here, whatever the route (but for PUBLIC_API's, which aren't asked for one)."""
    header = request.headers.get("Authorization")
    presented = bearer_key(header)
    if presented is None:
        return
    state = req_state(request)
    bootstrap = request.app[SETTINGS].gateway_api_key
    if bootstrap is not None and api_key_matches(header, bootstrap.get_secret_value()):
        state.api_key, state.key_admin, state.key_name = True, True, BOOTSTRAP_KEY_NAME
        state.key_id = BOOTSTRAP_KEY_NAME
        return
    if not presented.startswith(INTEGRATION_KEY_PREFIX):
        return  # not ours: the session (if any) decides, as without a key
    invalid = Unauthorized(
        "This API key is not valid: it was revoked, or mistyped.", code="invalid_api_key"
    )
    if not could_be_integration_key(presented):
        raise invalid
    try:
        key = await request.app[UPSTREAM].identity.verify_api_key(presented)
    except Unauthorized:
        raise invalid from None
    state.api_key, state.key_name, state.key_id = True, key["name"], key["id"]
    state.key_scopes = frozenset(key["scopes"])


def _key_allows(request: web.Request) -> None:
    state = req_state(request)
    if state.key_admin:
        return
    needed = API_SCOPES.get(route_key(request))
    if needed is None:
        raise Forbidden(
            "This needs an administrator (or the bootstrap key); integration keys can't do it.",
            code="insufficient_scope",
        )
    if needed not in state.key_scopes:
        raise Forbidden(f"This API key lacks the scope {needed}.", code="insufficient_scope")


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = req_state(request)
    cookie = cookie_token(request.cookies.get(request.app[SETTINGS].csrf_cookie), 20, 100)
    if cookie:
        state.csrf = cookie
    elif not _plain(request):
        state.csrf = new_csrf_token()
        state.csrf_new = True
    # A key authorises /api calls within its scopes, reads as well as writes (_gate). A
    # public document grants nothing, so it is served whatever key comes with it (a stale
    # one in a client's configuration too), as the pages outside /api are.
    if is_api(request) and request.path not in PUBLIC_API:
        await _authenticate_key(request)
    # A GET needs no token, and a link or a script on another site navigates the browser
    # to one with the Lax session cookie: answered, its size tells whoever sees the
    # traffic what a search found (README "Compression and secrets").
    elsewhere = request.headers.get("Sec-Fetch-Site") in ELSEWHERE
    if elsewhere and _read_by_scripts(request) and not state.api_key:
        log.warning("cross_site_read_refused", path=request.path[:200])
        raise OriginRefused(N_("The request came from another site."))
    if request.method in UNSAFE:
        settings = request.app[SETTINGS]
        origin = request.headers.get("Origin")
        # Our token pages answer Referrer-Policy: no-referrer, so a browser posts their
        # forms with "Origin: null"; the CSRF token below must still match.
        opaque_ok = origin == "null" and request.path.startswith(NO_REFERRER)
        if not opaque_ok and not origin_allowed(origin, settings.public_origin):
            # Another site's page, or this site at an address PUBLIC_URL doesn't name (a
            # port moved without it): the line says which, for whoever reads the logs.
            log.warning(
                "csrf_origin_refused",
                origin=(origin or "")[:200],
                public_url=settings.public_origin,
            )
            raise OriginRefused(N_("The request came from another site."))
        if not state.api_key:
            if is_api(request):
                submitted = request.headers.get("X-CSRF-Token")
            else:
                resource = request.match_info.route.resource  # None: no such route
                large = LARGE_FORMS.get(resource.canonical) if resource else None
                if large is not None:
                    # Its own limit, for this request only; the handler gets the clone.
                    request = request.clone(client_max_size=large[0])
                try:
                    form = await read_form(request)
                except web.HTTPRequestEntityTooLarge:
                    if large is None:
                        raise
                    raise TooLarge(large[1], code="too_large") from None
                value = form.get("csrf_token")
                submitted = value if isinstance(value, str) else None
            if not csrf_matches(cookie, submitted):
                raise CsrfFailed(N_("The form expired, please try again."))
    return await handler(request)


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = req_state(request)
    raw_token = request.cookies.get(request.app[SETTINGS].session_cookie)
    token = cookie_token(raw_token)
    if raw_token and token is None:
        state.clear_session = True  # not a session of ours: the browser forgets it
    if token and not _plain(request) and not state.api_key:
        # The page a change redirects to (it carries the change's flash message) may be
        # answered by another replica than the one that made the change, before that one's
        # announcement reaches it: it asks identity afresh, so the page shows the change.
        fresh = request.app[SETTINGS].flash_cookie in request.cookies
        try:
            current = await request.app[UPSTREAM].identity.current(token, fresh=fresh)
        except Unauthorized:
            state.clear_session = True
        else:
            state.user = current["user"]
    _gate(request)
    set_actor(_actor(request))
    response = await handler(request)
    if state.session_set and state.user is not None and token:
        # A log in (or an accept) replaced a live session's cookie: a shared computer's
        # next person. That session ends too, rather than staying valid for whoever had
        # copied the cookie.
        try:
            await request.app[UPSTREAM].identity.logout(token)
        except Unauthorized:
            pass  # over already
        except Unavailable:
            log.warning("replaced_session_not_ended")  # it ends at its idle timeout
    return response


STAFF_ROLES = ("administrator", "staff")


def _actor(request: web.Request) -> Actor | None:
    """Who the changes this request makes are recorded as (the Activity log): the key of
    an /api call, or the staff member at /admin or /api. Nobody for a client's or an
    invitee's own requests (accepting, resetting a password, logging out)."""
    state = req_state(request)
    if state.api_key and state.key_id and state.key_name:
        return Actor(type="key", id=state.key_id, name=state.key_name)
    user = state.user
    staff_area = request.path.startswith(("/admin", "/api/"))
    if user is not None and staff_area and user.get("role") in STAFF_ROLES:
        return Actor(type="user", id=str(user["id"]), name=str(user["email"])[:320])
    return None


# Admin pages Staff may not open: Settings (API keys included), Users (staff
# management) and Activity (what everyone did). Staff work with portals, invitations and clients.
ADMINISTRATOR_PAGES = ("/admin/settings", "/admin/users", "/admin/activity")
# ... but for the user pickers' search in the portal editor, which Staff use too (the
# first 200 users are on the page; the rest are searched as Staff type, app.js).
STAFF_PAGES = frozenset({"/admin/users/search"})


def _gate(request: web.Request) -> None:
    """The role each area needs, checked once here so that no route can forget it:
    /api/v1 by key scope (or an Administrator's session; a Staff session gets the routes
    that have a scope), /admin for Administrators and Staff (Staff not Settings or
    Users)."""
    path = request.path
    state = req_state(request)
    user = state.user
    role = user.get("role") if user is not None else None
    if path.startswith("/api/") and path not in PUBLIC_API:
        if state.api_key:
            _key_allows(request)
            return
        if role == "administrator" or (role == "staff" and route_key(request) in API_SCOPES):
            return
        if user is None:
            raise Unauthorized("Log in as an administrator or use an API key.", code="no_session")
        raise Forbidden("This needs an administrator.", code="forbidden")
    if path == "/admin" or path.startswith("/admin/"):
        if user is None:
            raise web.HTTPSeeOther(login_url(request.path_qs))
        if role == "staff" and path.startswith(ADMINISTRATOR_PAGES) and path not in STAFF_PAGES:
            raise Forbidden(N_("Only Administrators can open this page."), code="forbidden")
        if role not in ("administrator", "staff"):
            raise NotFound("No such page.")


def login_url(next_path: str) -> str:
    return "/login?next=" + quote(next_path, safe="/")


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    portal_page = request.path.startswith("/client-portal/") and request.path != "/client-portal/"
    headers["Content-Security-Policy"] = PORTAL_CSP if portal_page else CSP
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    if request.app[SETTINGS].secure_cookies:
        # PUBLIC_URL is https: browsers keep to it (a year), so nobody in the middle serves
        # a page over http on a later visit. Not over http, where it would pin localhost.
        headers["Strict-Transport-Security"] = HSTS
    no_referrer = request.path.startswith(NO_REFERRER)
    headers["Referrer-Policy"] = "no-referrer" if no_referrer else "same-origin"
    # Static files (assets.py), the logo and stylesheet (branding.py): they say how to
    # cache them; anything else there (a 404) isn't kept.
    cacheable = _plain(request) and "Cache-Control" in headers
    if not cacheable:
        headers["Cache-Control"] = "no-store"
    settings = request.app[SETTINGS]
    state = req_state(request)
    # Cookies here go straight to the headers: aiohttp has already rendered
    # response.cookies when this signal runs.
    # Not to a call with a key: it posts no form (the cookie was built and sent each call).
    if state.csrf_new and not state.api_key and response.status < 500:
        # Lax, not Strict: a Strict cookie stays home when a link on another site (a
        # webmail, a chat) is followed, so that page got a new token here and every form
        # open in the person's other tabs answered "The form expired". A cross-site post
        # carries neither, and the token is checked in the form (with the Origin) anyway.
        _header_cookie(response, settings.csrf_cookie, state.csrf, "Lax", settings.secure_cookies)
    if state.clear_session and not state.session_set:
        _header_cookie(
            response, settings.session_cookie, "", "Lax", settings.secure_cookies, max_age=0
        )


def _header_cookie(
    response: web.StreamResponse,
    name: str,
    value: str,
    samesite: str,
    secure: bool,
    max_age: int | None = None,
) -> None:
    jar: SimpleCookie = SimpleCookie()
    jar[name] = value
    morsel = jar[name]
    morsel["path"] = "/"
    morsel["httponly"] = True
    morsel["samesite"] = samesite
    if secure:
        morsel["secure"] = True
    if max_age is not None:
        morsel["max-age"] = max_age
        morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
    response.headers.add("Set-Cookie", morsel.output(header="").strip())


def set_session(request: web.Request, response: web.StreamResponse, token: str) -> None:
    req_state(request).session_set = True
    response.set_cookie(
        request.app[SETTINGS].session_cookie,
        token,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.app[SETTINGS].secure_cookies,
    )


def clear_session(request: web.Request) -> None:
    req_state(request).clear_session = True


def client_ip(request: web.Request) -> str:
    """The client's address: the TCP peer, or, when the peer is one of
    GATEWAY_TRUSTED_PROXIES, what the proxies say in the forwarded header they write."""
    settings = request.app[SETTINGS]
    header = settings.gateway_forwarded_header
    hops = forwarded_hops(request.headers.getall(header, []), header)
    return client_address(request.remote, hops, request.app[TRUSTED_PROXIES])


async def rate_limit(request: web.Request, scope: str, email: str | None = None) -> None:
    """Count this unauthenticated post per client address, and per email too when one
    is given (a reset email: capped per inbox). An address is counted by its
    typed_email_key, the inbox identity reads it as, so every spelling of one inbox
    shares one count."""
    limits = request.app[LIMITS]
    wait = await limits.hit(limits.address, scope, address_key(client_ip(request)))
    if not wait and email:
        wait = await limits.hit(limits.email, scope, typed_email_key(email))
    _raise_if(wait)


async def password_form(request: web.Request, scope: str) -> tuple[str, str, str]:
    """A set-password form (accept, reset): its link token, Password and Confirm Password,
    counted under ``scope`` (rate_limit) before anyone looks the token up."""
    form = await request.post()
    await rate_limit(request, scope)
    return (
        form_str(form, "token", 200),
        form_str(form, "password", PASSWORD_FIELD),
        form_str(form, "confirm", PASSWORD_FIELD),
    )


class LoginAttempt:
    """One password check under the limits (login_attempt): ``failed`` once identity says
    the email or password is wrong."""

    failed = False


@asynccontextmanager
async def login_attempt(request: web.Request, email: str) -> AsyncIterator[LoginAttempt]:
    """Around a password check: every attempt counts per client address; failures count
    per account and address, so an attacker's guesses slow only the attacker, and the
    owner, from their own address, still gets in. The attempt counts as a failure before
    identity is asked (counted afterwards, guesses sent at once were all checked against
    the count before any of them was in it) and is taken back unless it ``failed``: a
    log in, or identity not answering."""
    limits = request.app[LIMITS]
    address = address_key(client_ip(request))
    account = typed_email_key(email)
    wait = await limits.hit(limits.address, "login", address)
    if not wait:
        wait = await limits.hit(limits.login_failures, account, address)
        if wait:  # refused here: no attempt made, none counted
            await limits.take_back(limits.login_failures, account, address)
    _raise_if(wait)
    attempt = LoginAttempt()
    try:
        yield attempt
    finally:
        if not attempt.failed:
            await limits.take_back(limits.login_failures, account, address)


def _raise_if(wait: int) -> None:
    if wait:
        raise RateLimited(
            N_("Too many attempts. Please wait a little and try again."), retry_after=wait
        )
