"""Client-facing pages: home, log in/out, forgot/reset password, and the client portals."""

from __future__ import annotations

import contextlib
import re

from aiohttp import web

from libs.common.email import email_or_none
from libs.common.errors import DomainError, NotFound, Unauthorized
from libs.common.i18n import (
    LANGUAGE_MESSAGE,
    TIME_ZONE_MESSAGE,
    is_language,
    is_time_zone,
    time_zones,
)
from libs.common.passwords import PASSWORD_FIELD

from ..domain import BAD_LOGIN, cookie_token, new_password_problem, safe_next_path
from ..handlers.saga import is_team, login_destination
from ..i18n import N_
from ..rendering import current_user, error_page, form_str, render, see_other
from ..security import (
    clear_session,
    login_attempt,
    login_url,
    password_form,
    rate_limit,
    set_session,
)
from ..state import SETTINGS, UPSTREAM

SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
FORGOT_ANSWER = N_("If an account exists for that email, we've sent a link to reset the password.")

routes = web.RouteTableDef()


@routes.get("/")
async def home(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    if user is None:
        raise web.HTTPSeeOther("/login")
    if is_team(user):
        raise web.HTTPSeeOther("/admin/portals")
    return render(request, "home.html")


@routes.get("/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    next_path = safe_next_path(request.query.get("next")) or ""
    user = current_user(request)
    if user is not None and next_path:
        raise web.HTTPSeeOther(next_path)
    return render(request, "login.html", {"next": next_path, "email": ""})


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    email = form_str(form, "email", 320).strip()
    password = form_str(form, "password", PASSWORD_FIELD)
    next_raw = form_str(form, "next", 2000)
    up = request.app[UPSTREAM]
    async with login_attempt(request, email) as attempt:
        try:
            session = await up.identity.login(email, password)
        except DomainError as exc:
            if exc.status not in (401, 403, 422):
                raise
            attempt.failed = True
            context = {"next": safe_next_path(next_raw) or "", "email": email, "error": BAD_LOGIN}
            return render(request, "login.html", context, status=401)
    response = see_other(request, await login_destination(up, session["user"], next_raw))
    set_session(request, response, session["token"])
    return response


@routes.get("/logout")
async def logout_form(request: web.Request) -> web.StreamResponse:
    """/logout typed, bookmarked or linked to: the Log out button. Only its POST (with the
    CSRF token) ends the session, so a link or an image elsewhere can't."""
    if current_user(request) is None:
        raise web.HTTPSeeOther("/login")
    return render(request, "logout.html")


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    token = cookie_token(request.cookies.get(request.app[SETTINGS].session_cookie))
    # First: this browser forgets the session whatever identity answers, so Log out on a
    # shared computer never leaves it logged in (with identity down, the page says to try
    # again, and the session ends on the server when it is next idle too long).
    clear_session(request)
    if token:
        with contextlib.suppress(Unauthorized):
            await request.app[UPSTREAM].identity.logout(token)
    return see_other(request, "/login", flash="logged_out")


@routes.get("/forgot-password")
async def forgot_form(request: web.Request) -> web.StreamResponse:
    return render(request, "forgot.html", {"email": ""})


@routes.post("/forgot-password")
async def forgot(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    raw = form_str(form, "email", 320)
    email = email_or_none(raw)
    await rate_limit(request, "forgot", email or raw)
    if email is None:
        error = N_("Enter an email address like name@example.com.")
        return render(request, "forgot.html", {"email": raw, "error": error}, status=422)
    await request.app[UPSTREAM].identity.request_reset(email)
    return render(request, "forgot.html", {"email": "", "done": FORGOT_ANSWER})


NEW_RESET_LINK = N_("You can ask for a new link on the Forgot password? page.")
# Identity answers 410 reset_expired for a link used as for one out of time; its reason
# says which. A link is "used" too when a newer password ended it (another link, a change).
USED_RESET_LINK = (
    N_("This reset link has already been used"),
    N_(
        "Each link sets a password once, and a new password ends the links sent before it."
        " You can ask for a new link on the Forgot password? page."
    ),
)


def _reset_problem(request: web.Request, exc: DomainError) -> web.Response:
    message = NEW_RESET_LINK
    if exc.code == "reset_expired" and exc.details.get("reason") == "used":
        title, message = USED_RESET_LINK
    elif exc.code == "reset_expired":
        title = N_("This reset link has expired")
    elif exc.code == "reset_invalid":
        title = N_("This reset link is not valid")
    else:
        raise exc
    return error_page(
        request, exc.status, title, message, link=("/forgot-password", "Forgot password?")
    )


@routes.get("/reset-password")
async def reset_form(request: web.Request) -> web.StreamResponse:
    token = request.query.get("token", "")[:200]
    try:
        found = await request.app[UPSTREAM].identity.validate_reset(token)
    except DomainError as exc:
        return _reset_problem(request, exc)
    return render(request, "reset.html", {"token": token, "email": found["email"], "errors": {}})


@routes.post("/reset-password")
async def reset(request: web.Request) -> web.StreamResponse:
    token, password, confirm = await password_form(request, "reset")
    up = request.app[UPSTREAM]
    try:
        found = await up.identity.validate_reset(token)
        problem = new_password_problem(password, confirm, found["email"])
        if problem is None:
            await up.identity.confirm_reset(token, password)
            return see_other(request, "/login", flash="password_set")
    except DomainError as exc:
        if exc.code != "weak_password":
            return _reset_problem(request, exc)
        problem = ("password", exc.message)
    field, message = problem
    context = {"token": token, "email": found["email"], "errors": {field: message}}
    return render(request, "reset.html", context, status=422)


@routes.get("/client-portal/")
async def client_portals(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    if user is None:
        raise web.HTTPSeeOther(login_url("/client-portal/"))
    up = request.app[UPSTREAM]
    if is_team(user):
        portals = (await up.portals.find(status="active", limit=200))["items"]
    else:
        portals = [p for p in await up.portals.of_user(user["id"]) if p["status"] == "active"]
        if len(portals) == 1:
            raise web.HTTPSeeOther(f"/client-portal/{portals[0]['slug']}/")
    return render(request, "portal_list.html", {"portals": portals})


@routes.get("/client-portal/{slug}/")
async def client_portal(request: web.Request) -> web.StreamResponse:
    slug = request.match_info["slug"]
    user = current_user(request)
    if user is None:
        raise web.HTTPSeeOther(login_url(request.path))
    if not SLUG.fullmatch(slug) or len(slug) > 80:
        raise NotFound(N_("No such portal."), code="portal_not_found")
    up = request.app[UPSTREAM]
    if is_team(user):
        portal = await up.portals.by_slug(slug)
    else:
        portal = await up.portals.of_user_by_slug(user["id"], slug)
    return render(request, "portal.html", {"portal": portal})


@routes.get("/client-portal")
async def client_portals_no_slash(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/client-portal/")


# --- Account: the reader's Language and Time Zone (issue 17) -----------------------------


def _account_page(
    request: web.Request, locale: str, zone: str, errors: dict[str, str], status: int = 200
) -> web.Response:
    context = {
        "zones": time_zones(),
        "locale": locale,
        "time_zone": zone,
        "errors": errors,
    }
    return render(request, "account.html", context, status=status)


@routes.get("/account")
async def account_form(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    if user is None:
        raise web.HTTPSeeOther(login_url("/account"))
    return _account_page(request, user.get("locale") or "", user.get("time_zone") or "", {})


@routes.post("/account")
async def account_save(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    if user is None:
        raise web.HTTPSeeOther(login_url("/account"))
    form = await request.post()
    locale = form_str(form, "locale", 16).strip()
    zone = form_str(form, "time_zone", 64).strip()
    errors: dict[str, str] = {}
    if locale and not is_language(locale):
        errors["locale"] = LANGUAGE_MESSAGE
    if zone and not is_time_zone(zone):
        errors["time_zone"] = TIME_ZONE_MESSAGE
    if errors:
        return _account_page(request, locale, zone, errors, status=422)
    up = request.app[UPSTREAM]
    await up.identity.set_preferences(user["id"], locale or None, zone or None)
    return see_other(request, "/account", flash="account_saved")
