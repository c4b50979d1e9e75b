"""Several portals, one invitation, from All Portals: tick portals → **Invite Client**
opens the Invite Client box for the ticked portals → **Send Invitation** sends one email
with one link for all of them (POST /invitations/group at the invitations service). No
script needed: the ticks are a GET form. The role gate (Administrators and Staff) is in
security._gate, for every /admin path."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from libs.common.email import email_or_none
from libs.common.errors import DomainError, NotFound

from ..answers import InvitationGroup, PortalAnswer
from ..domain import EXPIRY_CHOICES, MAX_GROUP_PORTALS, new_send_key, parse_uuid, send_key
from ..i18n import N_, gettext
from ..rendering import form_str, page_language, render, see_other
from ..state import UPSTREAM
from ..upstream import Upstream
from .editor import INVITE_ERROR_FIELDS, INVITE_ERRORS, invite_fields, invite_options

routes = web.RouteTableDef()

PATH = "/admin/portals/invite"
MAX_NAME = 200
# Refusals about the ticked portals themselves: shown above the list of them.
PORTAL_PROBLEMS = frozenset(
    {
        "portal_not_active",
        "portal_not_found",
        "already_has_access",
        "invitation_pending",
        "duplicate_portal",
        "too_many_portals",
        "no_portals",
    }
)


def _ticked(values: list[Any]) -> list[str]:
    """The ticked portal ids, each once, in the order ticked."""
    ids = (parse_uuid(v) for v in values if isinstance(v, str))
    return list(dict.fromkeys(i for i in ids if i is not None))


async def _portals(up: Upstream, ids: list[str]) -> list[PortalAnswer]:
    async def one(portal_id: str) -> PortalAnswer | None:
        try:
            return await up.portals.get(portal_id)
        except NotFound:
            return None

    found = await asyncio.gather(*(one(i) for i in ids))
    return [p for p in found if p is not None]


def _idle(portals: list[PortalAnswer]) -> str | None:
    idle = [p for p in portals if p["status"] != "active"]
    if not idle:
        return None
    names = ", ".join(f"'{p['title']}' ({gettext(p['status'].capitalize())})" for p in idle)
    return gettext("Only Active portals can take invitations: untick %(names)s.", names=names)


async def _page(
    request: web.Request,
    portals: list[PortalAnswer],
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    if values is None:
        access = await request.app[UPSTREAM].invitations.access_settings()
        values = {"expires_in_days": str(access["invitation_expiry_days"])}
    errors = dict(errors or {})
    page_language(request)  # _idle's words in the reader's language
    problem = _idle(portals)
    if problem and "invite_portals" not in errors:
        errors["invite_portals"] = problem
    context = {
        "portals": portals,
        "invite": values,
        "errors": errors,
        "expiry_choices": EXPIRY_CHOICES,
        "nav": "portals",
        # The form's own id: posted twice, it sends once (_send_once).
        "send_key": new_send_key(),
    }
    return render(request, "admin/invite_several.html", context, status=status)


def _too_many(ids: list[str]) -> bool:
    return len(ids) > MAX_GROUP_PORTALS


@routes.get(PATH)
async def invite_form(request: web.Request) -> web.StreamResponse:
    """The Invite Client box for the portals ticked on All Portals."""
    ids = _ticked(request.query.getall("portal_id", []))
    if not ids:
        return see_other(request, "/admin/portals", flash="invite_none")
    if _too_many(ids):
        return see_other(request, "/admin/portals", flash="invite_too_many")
    return await _page(request, await _portals(request.app[UPSTREAM], ids))


def _fields(form: MultiDictProxy[Any]) -> tuple[dict[str, str], dict[str, str]]:
    values, errors = invite_fields(form)
    values["name"] = form_str(form, "name", 2 * MAX_NAME).strip()
    if len(values["name"]) > MAX_NAME:
        errors["invite_name"] = gettext(
            "The name must be at most %(max)s characters.", max=MAX_NAME
        )
    return values, errors


async def _send_once(up: Upstream, body: dict[str, Any], key: str | None) -> InvitationGroup:
    """Invite under the form's key (send_key), so that a double click on Send Invitation
    or the back button's post of the same form sends one email: its twin's refusal
    (invitation_pending, the two at the same moment) is asked again under the key, which
    answers what the first made. What the key made being over (revoked, expired,
    accepted), the form invites again, as a post without a key (an older page) does."""
    if key is None:
        return await up.invitations.invite_group(body)
    keyed = {**body, "idempotency_key": key}
    try:
        made = await up.invitations.invite_group(keyed)
    except DomainError as exc:
        if exc.code != "invitation_pending":
            raise
        made = await up.invitations.invite_group(keyed)
    if all(i["status"] != "pending" for i in made["invitations"]):
        return await up.invitations.invite_group(body)
    return made


@routes.post(PATH)
async def send_invitation(request: web.Request) -> web.StreamResponse:
    up = request.app[UPSTREAM]
    form = await request.post()
    ids = _ticked(form.getall("portal_id", []))
    if not ids:
        return see_other(request, "/admin/portals", flash="invite_none")
    if _too_many(ids):
        return see_other(request, "/admin/portals", flash="invite_too_many")
    page_language(request)  # _fields' and _idle's words in the reader's language
    values, errors = _fields(form)
    portals = await _portals(up, ids)
    if len(portals) < len(ids):
        errors["invite_portals"] = N_("A ticked portal no longer exists; go back to All Portals.")
    elif problem := _idle(portals):
        errors["invite_portals"] = problem
    email = email_or_none(values["email"])
    if errors or email is None:
        return await _page(request, portals, values=values, errors=errors, status=422)
    body: dict[str, Any] = {"portal_ids": ids, **invite_options(request, email, values)}
    if values["name"]:
        body["name"] = values["name"]
    key = send_key(form_str(form, "send_key", 100), "group:" + ",".join(sorted(ids)), email)
    try:
        await _send_once(up, body, key)
    except DomainError as exc:
        if exc.status >= 500:
            raise
        if exc.code in PORTAL_PROBLEMS:
            errors["invite_portals"] = exc.message
        else:
            field = {**INVITE_ERROR_FIELDS, "name_too_long": "invite_name"}.get(
                exc.code, "invite_email"
            )
            if exc.code == "invalid_character" and exc.details.get("field") == "name":
                field = "invite_name"
            errors[field] = INVITE_ERRORS.get(exc.code, exc.message)
        return await _page(request, portals, values=values, errors=errors, status=422)
    return see_other(request, "/admin/portals", flash="invitation_sent_portals", email=email)
