"""Request security: the session (from identity, through this replica's short cache that
identity's revocations empty: cache.py), CSRF and Origin checks, role gates for /admin
and /api/v1, security headers, session cookies and rate limits."""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import quote

from aiohttp import web

from libs.common.errors import Forbidden, NotFound, RateLimited, Unauthorized

from .domain import api_key_matches, csrf_matches, new_csrf_token, origin_allowed
from .rendering import Handler, is_api
from .state import CSRF_COOKIE, LIMITERS, SESSION_COOKIE, SETTINGS, UPSTREAM, req_state

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PLAIN_PATHS = ("/static/", "/healthz", "/readyz", "/metrics")
PUBLIC_API = frozenset({"/api/v1/openapi.json"})
NO_REFERRER = ("/invitations/accept", "/reset-password")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _plain(request: web.Request) -> bool:
    return request.path.startswith(PLAIN_PATHS)


class CsrfFailed(Forbidden):
    code = "csrf_failed"


def _api_key(request: web.Request) -> bool:
    key = request.app[SETTINGS].gateway_api_key
    return key is not None and api_key_matches(
        request.headers.get("Authorization"), key.get_secret_value()
    )


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = req_state(request)
    cookie = request.cookies.get(CSRF_COOKIE)
    if cookie and 20 <= len(cookie) <= 100:
        state.csrf = cookie
    elif not _plain(request):
        state.csrf = new_csrf_token()
        state.csrf_new = True
    # The API key authorises every /api call, reads as well as writes.
    state.api_key = is_api(request) and _api_key(request)
    if request.method in UNSAFE:
        settings = request.app[SETTINGS]
        origin = request.headers.get("Origin")
        # Our token pages answer Referrer-Policy: no-referrer, so a browser posts their
        # forms with "Origin: null"; the CSRF token below must still match.
        opaque_ok = origin == "null" and request.path.startswith(NO_REFERRER)
        if not opaque_ok and not origin_allowed(origin, settings.public_origin):
            raise CsrfFailed("The request came from another site.")
        if not state.api_key:
            if is_api(request):
                submitted = request.headers.get("X-CSRF-Token")
            else:
                form = await request.post()
                value = form.get("csrf_token")
                submitted = value if isinstance(value, str) else None
            if not csrf_matches(cookie, submitted):
                raise CsrfFailed("The form expired, please try again.")
    return await handler(request)


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = req_state(request)
    token = request.cookies.get(SESSION_COOKIE)
    if token and not _plain(request) and not state.api_key:
        try:
            current = await request.app[UPSTREAM].identity.current(token)
        except Unauthorized:
            state.clear_session = True
        else:
            state.user = current["user"]
    _gate(request)
    return await handler(request)


def _gate(request: web.Request) -> None:
    """Administrator-only areas, checked once here so that no route can forget it."""
    path = request.path
    state = req_state(request)
    user = state.user
    is_admin = user is not None and user.get("role") == "administrator"
    if path.startswith("/api/") and path not in PUBLIC_API:
        if state.api_key or is_admin:
            return
        if user is None:
            raise Unauthorized("Log in as an administrator or use an API key.", code="no_session")
        raise Forbidden("This needs an administrator.", code="forbidden")
    if path == "/admin" or path.startswith("/admin/"):
        if user is None:
            raise web.HTTPSeeOther(login_url(request.path_qs))
        if not is_admin:
            raise NotFound("No such page.")


def login_url(next_path: str) -> str:
    return "/login?next=" + quote(next_path, safe="/")


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    no_referrer = request.path.startswith(NO_REFERRER)
    headers["Referrer-Policy"] = "no-referrer" if no_referrer else "same-origin"
    if not request.path.startswith("/static/"):
        headers["Cache-Control"] = "no-store"
    settings = request.app[SETTINGS]
    state = req_state(request)
    # Cookies here go straight to the headers: aiohttp has already rendered
    # response.cookies when this signal runs.
    if state.csrf_new and response.status < 500:
        _header_cookie(response, CSRF_COOKIE, state.csrf, "Strict", settings.secure_cookies)
    if state.clear_session and not state.session_set:
        _header_cookie(response, SESSION_COOKIE, "", "Lax", settings.secure_cookies, max_age=0)


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
        SESSION_COOKIE,
        token,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.app[SETTINGS].secure_cookies,
    )


def clear_session(request: web.Request) -> None:
    req_state(request).clear_session = True


def client_ip(request: web.Request) -> str:
    # The peer address only: X-Forwarded-For is not trusted without a known proxy.
    return request.remote or "unknown"


def rate_limit(request: web.Request, scope: str, email: str | None = None) -> None:
    """Count this attempt per IP, and per email too when one is given."""
    limiters = request.app[LIMITERS]
    wait = limiters.per_ip.hit(f"{scope}:{client_ip(request)}")
    if not wait and email:
        wait = limiters.per_email.hit(f"{scope}:{email.strip().lower()}")
    _raise_if(wait)


def login_limit(request: web.Request, email: str) -> None:
    """Before a password check: per IP every attempt counts; per email only failures
    (see login_failed), so a busy account isn't locked out by its own logins."""
    limiters = request.app[LIMITERS]
    wait = limiters.per_ip.hit(f"login:{client_ip(request)}")
    _raise_if(wait or limiters.per_email.blocked(f"login:{email.strip().lower()}"))


def login_failed(request: web.Request, email: str) -> None:
    request.app[LIMITERS].per_email.hit(f"login:{email.strip().lower()}")


def _raise_if(wait: int) -> None:
    if wait:
        raise RateLimited(
            "Too many attempts. Please wait a little and try again.", retry_after=wait
        )
