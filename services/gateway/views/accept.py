"""The accept page and saga endpoints: /invitations/accept (GET never consumes the
token), /invitations/accept/login for people who already have an account, and the pages
of a link that no longer works: each says what happened (replaced by a newer one,
expired and when, revoked), and the first two offer Email me a new link
(/invitations/accept/new-link), whose answer is the same whatever happens next."""

from __future__ import annotations

from aiohttp import web

from libs.common.email import same_email
from libs.common.errors import DomainError
from libs.common.passwords import PASSWORD_FIELD

from ..answers import ValidatedLink
from ..domain import BAD_LOGIN, new_password_problem, when
from ..handlers.saga import (
    ROLE_NAMES,
    AccountExists,
    Joined,
    accept_for_user,
    accept_with_password,
)
from ..i18n import N_
from ..rendering import (
    current_user,
    error_page,
    form_str,
    page_language,
    render,
    see_other,
)
from ..security import login_attempt, password_form, rate_limit, set_session
from ..state import UPSTREAM, req_state

routes = web.RouteTableDef()


INVITATION_PROBLEMS = {
    "invitation_replaced": (
        N_("This link was replaced by a newer one"),
        N_("This link was replaced by a newer one — use the latest email we sent you."),
    ),
    "invitation_expired": (
        N_("This invitation has expired"),
        N_("Ask the person who invited you to resend it, or ask for a new link here."),
    ),
    "invitation_revoked": (
        N_("This invitation has been revoked"),
        N_(
            "It was withdrawn by whoever sent it. Ask the person who invited you if you still"
            " need access."
        ),
    ),
    "invitation_used": (
        N_("This invitation has already been used"),
        N_("If it was you, log in to see your portal."),
    ),
    # A link for several portals (one invitation) none of which is Active any more.
    "portal_not_active": (
        N_("These portals aren't available right now"),
        N_(
            "The portals of this invitation aren't available at the moment. Ask the person who"
            " invited you."
        ),
    ),
    # The same for a link to one portal (the answer's portal_count is 1).
    "portal_not_active_one": (
        N_("This portal isn't available right now"),
        N_(
            "The portal of this invitation isn't available at the moment. Ask the person who"
            " invited you."
        ),
    ),
    "invitation_invalid": (
        N_("This invitation link is not valid"),
        N_("Check that you copied the whole link from the email."),
    ),
}


# A link whose address has a disabled account: a log in would answer "The email or
# password is incorrect." to the right password. The link's holder owns the address.
ACCOUNT_DISABLED = (
    N_("Your account is disabled"),
    N_("Ask the person who invited you to enable it; this link works again once they have."),
)


# Answers of a saga step for an account disabled while it ran: portals' grant (it has heard
# the Disable) or identity's session.
DISABLED_MEANWHILE = frozenset({"user_disabled", "account_disabled"})


def _account_disabled(request: web.Request, invitation: ValidatedLink) -> web.Response:
    req_state(request).invitation_locale = invitation.get("locale")
    title, message = ACCOUNT_DISABLED
    return error_page(request, 403, title, message)


# The pages that offer Email me a new link: the link is known, the invitation may still be
# usable. (A revoked one is not; a used one needs a log in, not a link.)
NEW_LINK_OFFERED = frozenset({"invitation_replaced", "invitation_expired"})


def _invitation_problem(request: web.Request, exc: DomainError, token: str) -> web.Response:
    if exc.code not in INVITATION_PROBLEMS:
        raise exc
    one_portal = exc.code == "portal_not_active" and exc.details.get("portal_count") == 1
    title, message = INVITATION_PROBLEMS["portal_not_active_one" if one_portal else exc.code]
    # The invitation's language, where the answer says it (else the reader's own).
    locale = exc.details.get("locale")
    req_state(request).invitation_locale = locale if isinstance(locale, str) else None
    page_language(request)  # the expiry below in the reader's zone and language
    if exc.code == "invitation_used":
        link = ("/login?next=/client-portal/", N_("Log in"))
        return error_page(request, exc.status, title, message, link=link)
    if exc.code == "invitation_invalid":
        return error_page(request, exc.status, title, message)
    expired_at = exc.details.get("expired_at") if exc.code == "invitation_expired" else None
    context = {
        "title": title,
        "message": message,
        "expired_at": when(expired_at) if isinstance(expired_at, str) else None,
        "expired_iso": expired_at,
        "token": token if exc.code in NEW_LINK_OFFERED else None,
    }
    return render(request, "link_problem.html", context, status=exc.status)


def _accept_page(
    request: web.Request,
    token: str,
    invitation: ValidatedLink,
    errors: dict[str, str],
    status: int = 200,
) -> web.Response:
    # The page speaks the invitation's language unless the reader's account has its own.
    req_state(request).invitation_locale = invitation.get("locale")
    user = current_user(request)
    if user is not None and same_email(user["email"], invitation["email"]):
        template = "accept_confirm.html"
    elif invitation.get("account_exists"):
        template = "accept_login.html"
    else:
        template = "accept.html"
    context = {
        "token": token,
        "invitation": invitation,
        "errors": errors,
        # A staff invitation's role, in words ("Staff"); None for a client's invitation.
        "role_name": ROLE_NAMES.get(invitation.get("role") or ""),
    }
    return render(request, template, context, status=status)


def _joined(request: web.Request, joined: Joined) -> web.Response:
    """Where an account that accepted lands; a staff invitation says the role it has now,
    and says so plainly when the account's own role was higher and stays."""
    if joined.role is None:
        return see_other(request, joined.destination)
    flash = "staff_role_kept" if joined.kept else "staff_joined"
    return see_other(request, joined.destination, flash=flash, email=ROLE_NAMES[joined.role])


@routes.get("/invitations/accept")
async def accept_form(request: web.Request) -> web.StreamResponse:
    token = request.query.get("token", "")[:200]
    try:
        invitation = await request.app[UPSTREAM].invitations.validate(token)
    except DomainError as exc:
        return _invitation_problem(request, exc, token)
    if invitation.get("account_disabled"):
        return _account_disabled(request, invitation)
    return _accept_page(request, token, invitation, {})


@routes.post("/invitations/accept/new-link")
async def new_link(request: web.Request) -> web.StreamResponse:
    """Email me a new link. The invitations service writes the request down and answers
    before it looks anything up; this page is the same for every link (sent, refused by a
    limit, portal no longer Active, revoked meanwhile, never ours) and shows no address:
    the new link goes only to the one the invitation was sent to."""
    form = await request.post()
    token = form_str(form, "token", 200)
    await rate_limit(request, "new_link")
    await request.app[UPSTREAM].invitations.request_new_link(token)
    return render(request, "link_requested.html", status=202)


@routes.post("/invitations/accept")
async def accept(request: web.Request) -> web.StreamResponse:
    token, password, confirm = await password_form(request, "accept")
    up = request.app[UPSTREAM]
    try:
        invitation = await up.invitations.validate(token)
        if invitation.get("account_disabled"):
            return _account_disabled(request, invitation)
        user = current_user(request)
        if user is not None and same_email(user["email"], invitation["email"]):
            joined = await accept_for_user(up, token, invitation, user["id"])
            response = _joined(request, joined)
            if joined.raised:
                # A new session at a change of privilege (OWASP): raising the role ended
                # every session of the account (identity's set_role), this one's too.
                session = await up.identity.issue_session(user["id"])
                set_session(request, response, session["token"])
            return response
        if invitation.get("account_exists"):
            return _accept_page(request, token, invitation, {}, status=409)
        problem = new_password_problem(password, confirm, invitation["email"])
        if problem is not None:
            field, message = problem
            return _accept_page(request, token, invitation, {field: message}, status=422)
        accepted = await accept_with_password(up, token, password, invitation)
    except AccountExists:
        return _accept_page(request, token, {**invitation, "account_exists": True}, {}, 409)
    except DomainError as exc:
        if exc.code == "weak_password":
            return _accept_page(request, token, invitation, {"password": exc.message}, 422)
        if exc.code in DISABLED_MEANWHILE:
            return _account_disabled(request, invitation)
        return _invitation_problem(request, exc, token)
    role_name = ROLE_NAMES.get(invitation.get("role") or "")
    response = see_other(
        request,
        accepted.destination,
        **({"flash": "staff_joined", "email": role_name} if role_name else {}),
    )
    set_session(request, response, accepted.token)
    return response


@routes.post("/invitations/accept/login")
async def accept_login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = form_str(form, "token", 200)
    password = form_str(form, "password", PASSWORD_FIELD)
    up = request.app[UPSTREAM]
    try:
        invitation = await up.invitations.validate(token)
    except DomainError as exc:
        return _invitation_problem(request, exc, token)
    if invitation.get("account_disabled"):
        return _account_disabled(request, invitation)
    invitation = {**invitation, "account_exists": True}
    async with login_attempt(request, invitation["email"]) as attempt:
        try:
            # Always the invited address: the form's email field is only shown, never trusted.
            session = await up.identity.login(invitation["email"], password)
        except DomainError as exc:
            if exc.status not in (401, 403, 422):
                raise
            attempt.failed = True
            return _accept_page(request, token, invitation, {"password": BAD_LOGIN}, status=401)
    user = session["user"]
    if not same_email(user["email"], invitation["email"]):
        return _accept_page(request, token, invitation, {"password": BAD_LOGIN}, status=401)
    try:
        joined = await accept_for_user(up, token, invitation, user["id"])
    except DomainError as exc:
        if exc.code in DISABLED_MEANWHILE:
            return _account_disabled(request, invitation)
        response = _invitation_problem(request, exc, token)
    else:
        response = _joined(request, joined)
        if joined.raised:
            # Raising the role ended the session the log in just made (identity's
            # set_role): a new one, at the new role.
            session = await up.identity.issue_session(user["id"])
    set_session(request, response, session["token"])
    return response
