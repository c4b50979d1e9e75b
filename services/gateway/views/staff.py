"""Users → Invite Staff (Administrators only: /admin/users is one of the
ADMINISTRATOR_PAGES): Email and Role → Send Invitation, and Resend / Revoke of the
pending staff invitations listed on the Users screen; the same through
/api/v1/staff-invitations (security.ADMIN_ONLY_API). The invitations service does the
rest, as for a client's invitation."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from libs.common.email import email_or_none
from libs.common.errors import DomainError, RateLimited
from libs.common.web import json_response, read_json

from ..answers import InvitationAnswer
from ..contracts import StaffInvitation, StaffInvitationList, StaffInviteResult
from ..domain import send_key
from ..i18n import N_
from ..rendering import current_user, error_page, form_str, see_other
from ..state import UPSTREAM
from .admin import ID, STAFF_ROLE_NAMES, _users_page, shown_sent_at
from .api import API, EmailAddress, InviteLanguage

routes = web.RouteTableDef()

EMAIL_PROBLEM = "Enter a single valid email address, like name@example.com."
ROLE_PROBLEM = N_("Choose a role: Administrator or Staff.")
# Refusals shown beside the Email field: the address is already on the team (or the
# service's own check of it); the form stays filled in.
EMAIL_REFUSALS = frozenset({"invalid_email", "already_on_team", "account_disabled"})
USERS = "/admin/users"


@routes.post("/admin/users/invite")
async def invite_staff(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    raw_email = form_str(form, "email", 320).strip()
    role = form_str(form, "role", 20)
    locale = form_str(form, "locale", 20).strip() or None
    shown = {"email": raw_email, "role": role, "locale": locale or ""}
    errors: dict[str, str] = {}
    email = email_or_none(raw_email)
    if email is None:
        errors["staff_email"] = EMAIL_PROBLEM
    if role not in STAFF_ROLE_NAMES:
        errors["staff_role"] = ROLE_PROBLEM
    if errors:
        return await _users_page(request, status=422, invite=shown, invite_errors=errors)
    assert email is not None
    admin = current_user(request)
    try:
        answer = await request.app[UPSTREAM].invitations.invite_staff(
            email,
            role,
            admin["email"] if admin else None,
            locale,
            # Another role chosen (back, changed) is another request: resent with it.
            send_key(form_str(form, "send_key", 100), f"staff:{role}", email),
            # Whose right to invite staff the invitation lives by (SECURITY.md).
            str(admin["id"]) if admin else None,
        )
    except DomainError as exc:
        if exc.code in EMAIL_REFUSALS:
            problem = {"staff_email": exc.message}
        elif exc.code == "invalid_role":
            problem = {"staff_role": exc.message}
        elif exc.code == "invalid_locale":
            problem = {"staff_locale": exc.message}
        elif isinstance(exc, RateLimited):
            problem = {"staff_email": exc.message}
        else:
            raise
        return await _users_page(request, status=exc.status, invite=shown, invite_errors=problem)
    flash = "invitation_resent_pending" if answer["outcome"] == "resent" else "invitation_sent"
    return see_other(request, USERS, flash=flash, email=email)


@routes.post(f"/admin/users/invitations/{ID}/resend")
async def resend_staff(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    try:
        invitation = await request.app[UPSTREAM].invitations.resend_staff(
            request.match_info["id"], shown_sent_at(form)
        )
    except RateLimited as exc:
        headers = {"Retry-After": str(exc.retry_after)}
        link = (USERS, N_("Back to Users"))
        return error_page(request, exc.status, N_("Not resent"), exc.message, headers, link=link)
    return see_other(request, USERS, flash="invitation_resent", email=invitation["email"])


@routes.post(f"/admin/users/invitations/{ID}/revoke")
async def revoke_staff(request: web.Request) -> web.StreamResponse:
    await request.post()
    invitation = await request.app[UPSTREAM].invitations.revoke_staff(request.match_info["id"])
    return see_other(request, USERS, flash="invitation_revoked", email=invitation["email"])


# --- API (declared on the API's table; security.ADMIN_ONLY_API lists them) --------------
class StaffInviteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailAddress
    role: Literal["administrator", "staff"]
    locale: InviteLanguage = None


def _public(invitation: InvitationAnswer) -> dict[str, Any]:
    return {name: invitation.get(name) for name in StaffInvitation.model_fields}


@API.post(
    "/staff-invitations",
    "Invite a person to the team as Administrator or Staff (resends a pending one)",
    body=StaffInviteBody,
    response=StaffInviteResult,
    status=201,
    also=[(200, "Already pending: resent, with the role given now")],
    errors=[
        "409 already_on_team",
        "409 account_disabled",
        "422 invalid_email",
        "429 send_rate_limited",
    ],
)
async def api_invite_staff(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, StaffInviteBody)
    user = current_user(request)
    # An administrator's session, or the bootstrap key (no person: "api").
    inviter = user["email"] if user else "api"
    answer = await request.app[UPSTREAM].invitations.invite_staff(
        body.email,
        body.role,
        inviter,
        body.locale,
        invited_by_id=str(user["id"]) if user else None,
    )
    result = {"invitation": _public(answer["invitation"]), "outcome": answer["outcome"]}
    return json_response(result, 200 if answer["outcome"] == "resent" else 201)


@API.get(
    "/staff-invitations",
    "Pending and expired staff invitations, newest first",
    response=StaffInvitationList,
)
async def api_staff_invitations(request: web.Request) -> web.StreamResponse:
    items = await request.app[UPSTREAM].invitations.staff_invitations()
    return json_response({"items": [_public(i) for i in items]})
