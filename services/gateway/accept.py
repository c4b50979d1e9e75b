"""The accept page and saga endpoints: /invitations/accept (GET never consumes the
token) and /invitations/accept/login for people who already have an account."""

from __future__ import annotations

from aiohttp import web

from libs.common.errors import DomainError

from .domain import BAD_LOGIN, password_problem
from .handlers import AccountExists, accept_for_user, accept_with_password, same_email
from .rendering import current_user, error_page, form_str, render, see_other
from .security import login_failed, login_limit, rate_limit, set_session
from .state import UPSTREAM
from .upstream import Json

routes = web.RouteTableDef()


INVITATION_PROBLEMS = {
    "invitation_expired": (
        "This invitation has expired",
        "Ask the person who invited you to resend it.",
    ),
    "invitation_revoked": (
        "This invitation has been revoked",
        "Ask the person who invited you if you still need access.",
    ),
    "invitation_used": (
        "This invitation has already been used",
        "If it was you, log in to see your portal.",
    ),
    "invitation_invalid": (
        "This invitation link is not valid",
        "Check that you copied the whole link from the email.",
    ),
}


def _invitation_problem(request: web.Request, exc: DomainError) -> web.Response:
    if exc.code not in INVITATION_PROBLEMS:
        raise exc
    title, message = INVITATION_PROBLEMS[exc.code]
    link = ("/login?next=/client-portal/", "Log in") if exc.code == "invitation_used" else None
    return error_page(request, exc.status, title, message, link=link)


def _accept_page(
    request: web.Request, token: str, invitation: Json, errors: dict[str, str], status: int = 200
) -> web.Response:
    user = current_user(request)
    if user is not None and same_email(user["email"], invitation["email"]):
        template = "accept_confirm.html"
    elif invitation.get("account_exists"):
        template = "accept_login.html"
    else:
        template = "accept.html"
    context = {"token": token, "invitation": invitation, "errors": errors}
    return render(request, template, context, status=status)


@routes.get("/invitations/accept")
async def accept_form(request: web.Request) -> web.StreamResponse:
    token = request.query.get("token", "")[:200]
    try:
        invitation = await request.app[UPSTREAM].invitations.validate(token)
    except DomainError as exc:
        return _invitation_problem(request, exc)
    return _accept_page(request, token, invitation, {})


@routes.post("/invitations/accept")
async def accept(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = form_str(form, "token", 200)
    password, confirm = form_str(form, "password", 2048), form_str(form, "confirm", 2048)
    rate_limit(request, "accept")
    up = request.app[UPSTREAM]
    try:
        invitation = await up.invitations.validate(token)
        user = current_user(request)
        if user is not None and same_email(user["email"], invitation["email"]):
            slug = await accept_for_user(up, token, invitation, user["id"])
            return see_other(request, f"/client-portal/{slug}/")
        if invitation.get("account_exists"):
            return _accept_page(request, token, invitation, {}, status=409)
        problem = password_problem(password, confirm, invitation["email"])
        if problem is not None:
            field = "confirm" if problem == "The passwords do not match." else "password"
            return _accept_page(request, token, invitation, {field: problem}, status=422)
        accepted = await accept_with_password(up, token, password, invitation)
    except AccountExists:
        return _accept_page(request, token, {**invitation, "account_exists": True}, {}, 409)
    except DomainError as exc:
        if exc.code == "weak_password":
            return _accept_page(request, token, invitation, {"password": exc.message}, 422)
        return _invitation_problem(request, exc)
    response = see_other(request, f"/client-portal/{accepted.slug}/")
    set_session(request, response, accepted.token)
    return response


@routes.post("/invitations/accept/login")
async def accept_login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = form_str(form, "token", 200)
    password = form_str(form, "password", 1024)
    up = request.app[UPSTREAM]
    try:
        invitation = await up.invitations.validate(token)
    except DomainError as exc:
        return _invitation_problem(request, exc)
    login_limit(request, invitation["email"])
    invitation = {**invitation, "account_exists": True}
    try:
        # Always the invited address: the form's email field is only shown, never trusted.
        session = await up.identity.login(invitation["email"], password)
    except DomainError as exc:
        if exc.status not in (401, 403, 422):
            raise
        login_failed(request, invitation["email"])
        return _accept_page(request, token, invitation, {"password": BAD_LOGIN}, status=401)
    user = session["user"]
    if not same_email(user["email"], invitation["email"]):
        return _accept_page(request, token, invitation, {"password": BAD_LOGIN}, status=401)
    try:
        slug = await accept_for_user(up, token, invitation, user["id"])
        response: web.Response = see_other(request, f"/client-portal/{slug}/")
    except DomainError as exc:
        response = _invitation_problem(request, exc)
    set_session(request, response, session["token"])
    return response
