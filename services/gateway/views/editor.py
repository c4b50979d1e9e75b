"""The portal pages of the admin: All Portals, the portal editor (Title, Content,
Status, Client, Sub-Clients) and its Invite Client box. The role gate is in
security._gate, for every /admin path."""

from __future__ import annotations

import asyncio
import re
from functools import partial
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from libs.common.email import email_or_none
from libs.common.errors import DomainError, InvalidInput, NotFound
from libs.common.i18n import LANGUAGE_MESSAGE, is_language
from libs.common.text import REORDERING_WORDS
from libs.common.web import json_response

from ..answers import InviteOutcome, PortalAnswer, UserAnswer
from ..domain import (
    CONTENT_TOO_LARGE,
    CONTENT_TOO_LONG,
    EXPIRY_CHOICES,
    MAX_CONTENT,
    MAX_PERSONAL_MESSAGE,
    PERSONAL_MESSAGE_TOO_LONG,
    STATUSES,
    new_send_key,
    parse_uuid,
    send_key,
)
from ..edits import Edit, fingerprints, plan_edit
from ..i18n import N_, gettext
from ..rendering import current_user, form_str, page_language, render, see_other
from ..state import UPSTREAM
from ..upstream import Upstream

ID = "{id:[0-9a-fA-F-]{36}}"
NOT_ACTIVE = "This portal is not Active. Only Active portals can take invitations."

routes = web.RouteTableDef()

SLUG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
SLUG_RULE = N_("Use lower-case letters, digits and single hyphens, at most 80, e.g. acme-rebrand.")
SLUG_TAKEN = N_("Another portal already uses this slug; choose another.")
# The Language select of Invite Client: "Agency default" (empty), then each language by
# its own name, as a person reading only that language finds it.
# The portals service takes up to 500 sub-clients; one Save adds at most this many.
MAX_SUB_CLIENTS_ADDED = 100
STATUS_NAMES = {"active": N_("Active"), "pending": N_("Pending"), "archived": N_("Archived")}


async def _emails(up: Upstream, ids: set[str]) -> dict[str, str]:
    # One request for a page's clients or a portal's 500 sub-clients, not one each.
    ids = {i for i in ids if i}
    users = await up.identity.get_users(ids) if ids else {}
    return {i: users[i]["email"] if i in users else "(deleted user)" for i in ids}


@routes.get("/admin/portals")
async def portal_list(request: web.Request) -> web.StreamResponse:
    up = request.app[UPSTREAM]
    cursor = request.query.get("cursor") or None
    page = await up.portals.find(limit=50, cursor=cursor)
    emails = await _emails(up, {p["client_id"] for p in page["items"] if p["client_id"]})
    next_url = None
    if page.get("next_cursor"):
        next_url = "/admin/portals?" + urlencode({"cursor": page["next_cursor"]})
    context = {"portals": page["items"], "emails": emails, "next_url": next_url}
    return render(request, "admin/portals.html", context)


async def _editor(
    request: web.Request,
    portal: PortalAnswer | None,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
    invite: dict[str, str] | None = None,
    shown: str | None = None,
    picked: dict[str, Any] | None = None,
) -> web.Response:
    up = request.app[UPSTREAM]
    users: list[UserAnswer] = []
    emails: dict[str, str] = {}
    more_users = False
    if portal is not None:
        listed, access = await asyncio.gather(
            up.identity.list_users(limit=200), up.invitations.access_settings()
        )
        # Link Expiry starts at the Invitation Link Expiry setting.
        invite = invite or {"expires_in_days": str(access["invitation_expiry_days"])}
        users = listed["items"]
        more_users = listed.get("next_cursor") is not None
        emails = {u["id"]: u["email"] for u in users}
        wanted = {portal["client_id"] or "", *portal["sub_client_ids"]}
        if picked:
            wanted.add(picked["client_id"] or "")
        emails.update(await _emails(up, {i for i in wanted if i and i not in emails}))
    values = values or {
        "title": portal["title"] if portal else "",
        "slug": portal["slug"] if portal else "",
        "content": (portal.get("content") if portal else None) or "",
        "status": portal["status"] if portal else "pending",
    }
    context = {
        "portal": portal,
        "values": values,
        "errors": errors or {},
        "users": [u for u in users if not u.get("disabled")],
        "emails": emails,
        "statuses": STATUSES,
        "invite": invite or {},
        "expiry_choices": EXPIRY_CHOICES,
        "more_users": more_users,
        # What this form is based on: kept from the form it was posted from, if any.
        "shown": shown if shown is not None else fingerprints(portal) if portal else "",
        # A refused Save shows the Client and Sub-Clients as its person chose them.
        "picked": picked,
        # The Invite Client form's own id: posted twice, it sends once (invite).
        "send_key": new_send_key(),
    }
    return render(request, "admin/editor.html", context, status=status)


def _portal_fields(form: MultiDictProxy[Any]) -> tuple[dict[str, Any], dict[str, str]]:
    values = {
        "title": form_str(form, "title", 500).strip(),
        # One past the limit, to refuse it: never cut what was typed.
        "content": form_str(form, "content", MAX_CONTENT + 1),
        "status": form_str(form, "status", 20),
    }
    errors = {}
    if not values["title"]:
        errors["title"] = N_("Enter a title.")
    elif len(values["title"]) > 200:
        errors["title"] = N_("The title must be at most 200 characters.")
    # Left empty, the slug is made from the title (new portal) or kept (existing one).
    slug = form_str(form, "slug", 200).strip().lower()
    if slug:
        values["slug"] = slug
        if len(slug) > 80 or not SLUG.fullmatch(slug):
            errors["slug"] = SLUG_RULE
    if len(values["content"]) > MAX_CONTENT:
        errors["content"] = CONTENT_TOO_LONG
    if values["status"] not in STATUSES:
        errors["status"] = N_("Choose Active, Pending or Archived.")
    return values, errors


def _refused(exc: DomainError) -> dict[str, str]:
    """The field a refused Save names, in the reader's words."""
    if exc.code == "content_too_large":
        return {"content": CONTENT_TOO_LARGE}
    return {"title": REORDERING_WORDS if exc.code == "invalid_character" else exc.message}


@routes.get("/admin/portals/new")
async def new_portal_form(request: web.Request) -> web.StreamResponse:
    return await _editor(request, None)


@routes.post("/admin/portals/new")
async def create_portal(request: web.Request) -> web.StreamResponse:
    values, errors = _portal_fields(await request.post())
    if not errors:
        try:
            portal = await request.app[UPSTREAM].portals.create(values)
        except InvalidInput as exc:
            errors.update(_refused(exc))
        except DomainError as exc:
            if exc.code != "slug_taken":
                raise
            errors["slug" if "slug" in values else "title"] = SLUG_TAKEN
        else:
            return see_other(request, f"/admin/portals/{portal['id']}", flash="portal_created")
    return await _editor(request, None, values=values, errors=errors, status=422)


@routes.get(f"/admin/portals/{ID}")
async def edit_portal(request: web.Request) -> web.StreamResponse:
    portal = await request.app[UPSTREAM].portals.get(request.match_info["id"])
    return await _editor(request, portal)


async def _known_user(up: Upstream, raw: str) -> str | None:
    """A user the Client and Sub-Clients fields may take: one that exists and is not
    disabled (the pickers list no disabled user; a posted id of one is refused alike)."""
    user_id = parse_uuid(raw)
    if user_id is None:
        return None
    try:
        user = await up.identity.get_user(user_id)
    except NotFound:
        return None
    return None if user.get("disabled") else user_id


@routes.post(f"/admin/portals/{ID}")
async def save_portal(request: web.Request) -> web.StreamResponse:
    up = request.app[UPSTREAM]
    portal = await up.portals.get(request.match_info["id"])
    form = await request.post()
    values, errors = _portal_fields(form)
    client_raw = form_str(form, "client_id", 64)
    if form.get("client_id_shown") == client_raw:
        # The Client field was left as shown: keep the current client, who may have
        # accepted an invitation since this form was rendered.
        client_id = portal.get("client_id")
    else:
        client_id = (await _known_user(up, client_raw)) if client_raw else None
        if client_raw and client_id is None:
            errors["client_id"] = N_("Choose an existing user.")
    removed = {v for v in form.getall("remove_sub_client", []) if isinstance(v, str)}
    subs = [s for s in portal["sub_client_ids"] if s not in removed]
    # Sub-Clients takes several users in one go: every one chosen is added by this Save.
    chosen = [v[:64] for v in form.getall("add_sub_client", []) if isinstance(v, str) and v]
    found = await asyncio.gather(*(_known_user(up, raw) for raw in chosen[:MAX_SUB_CLIENTS_ADDED]))
    if len(chosen) > MAX_SUB_CLIENTS_ADDED:
        page_language(request)
        errors["add_sub_client"] = gettext(
            "Add at most %(max)s sub-clients at a time.", max=MAX_SUB_CLIENTS_ADDED
        )
    elif None in found:
        errors["add_sub_client"] = N_("Choose existing users.")
    for added in found:
        if added is not None and added not in subs and added != client_id:
            subs.append(added)
    subs = [s for s in subs if s != client_id]
    shown = form_str(form, "shown", 200)
    picked = {
        "client_id": portal.get("client_id") if "client_id" in errors else client_id,
        "client_id_shown": form_str(form, "client_id_shown", 64),
        "remove": removed,
        "add": [added for added in found if added is not None],
    }
    again = partial(_editor, request, values=values, shown=shown, picked=picked)
    if errors:
        return await again(portal, errors=errors, status=422)
    portal_id = portal["id"]
    try:
        edit, portal = await _save_fields(up, portal, shown, values)
        if edit.clashes:
            page_language(request)
            errors = {field: _clash(field, portal) for field in edit.clashes}
            return await again(portal, errors=errors, status=409, shown=edit.shown)
        if client_id != portal.get("client_id"):
            await up.portals.put_client(portal_id, client_id)
        if subs != portal["sub_client_ids"]:
            await up.portals.put_sub_clients(portal_id, subs)
    except (InvalidInput, DomainError) as exc:
        if exc.status >= 500 or exc.status == 404:
            raise
        if exc.code == "slug_taken":
            errors["slug"] = SLUG_TAKEN
        else:
            errors.update(_refused(exc))
        return await again(portal, errors=errors, status=422)
    return see_other(request, f"/admin/portals/{portal_id}", flash="portal_saved")


async def _save_fields(
    up: Upstream, portal: PortalAnswer, shown: str, values: dict[str, Any]
) -> tuple[Edit, PortalAnswer]:
    """Saves Title, Slug, Content and Status merged with what others saved since the form
    was shown; the portal must still be at the revision merged with, so a save landing in
    between is merged too. Returns the edit (its clashes, if any) and the portal it used."""
    for attempt in range(3):
        edit = plan_edit(shown, portal, values)
        if edit.clashes or not edit.changes:
            break
        try:
            await up.portals.patch(portal["id"], {**edit.changes, "revision": portal["revision"]})
            break
        except DomainError as exc:
            if exc.code != "portal_changed" or attempt == 2:
                raise
        portal = await up.portals.get(portal["id"])
    return edit, portal


def _clash(field: str, portal: PortalAnswer) -> str:
    """The message beside a field someone else changed after this form was opened."""
    if field == "content":
        return gettext(
            "Someone else changed the Content while you were editing."
            " Save Portal again to replace it with yours."
        )
    if field == "status":
        now = gettext(STATUS_NAMES[portal["status"]])
        return gettext(
            "Someone else changed the Status to “%(value)s” while you were editing."
            " Save Portal again to replace it with yours.",
            value=now,
        )
    if field == "slug":
        return gettext(
            "Someone else changed the Slug to “%(value)s” while you were editing."
            " Save Portal again to replace it with yours.",
            value=portal["slug"],
        )
    return gettext(
        "Someone else changed the Title to “%(value)s” while you were editing."
        " Save Portal again to replace it with yours.",
        value=portal["title"],
    )


INVITE_ERRORS = {
    "portal_not_active": NOT_ACTIVE,
    "invalid_email": "Enter an email address like name@example.com.",
    "already_has_access": N_(
        "This person already has access to the portal; no invitation is needed."
    ),
    "invalid_character": REORDERING_WORDS,
}
# Which field an error from the invitations service belongs to.
INVITE_ERROR_FIELDS = {
    "invalid_expires_in_days": "invite_expiry",
    "personal_message_too_long": "invite_message",
    "invalid_character": "invite_message",
    "invalid_locale": "invite_locale",
}


def invite_fields(form: MultiDictProxy[Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The Invite Client box: Email, Link Expiry, Language, Personal Message, and what is
    wrong."""
    values = {
        "email": form_str(form, "email", 320),
        "expires_in_days": form_str(form, "expires_in_days", 10),
        # Empty: the agency default (Settings → Branding → Language), when the email goes.
        "locale": form_str(form, "locale", 20).strip(),
        # Read well past the limit: a long message is refused, with its length, never cut.
        "personal_message": form_str(form, "personal_message", 20 * MAX_PERSONAL_MESSAGE),
    }
    errors = {}
    if email_or_none(values["email"]) is None:
        errors["invite_email"] = INVITE_ERRORS["invalid_email"]
    # Left out (an older form, a script): the setting decides.
    if values["expires_in_days"] and values["expires_in_days"] not in {
        str(c) for c in EXPIRY_CHOICES
    }:
        errors["invite_expiry"] = N_("Choose 7, 14, 21 or 30 days.")
    if values["locale"] and not is_language(values["locale"]):
        errors["invite_locale"] = LANGUAGE_MESSAGE
    message = values["personal_message"].replace("\r\n", "\n").strip()
    if len(message) > MAX_PERSONAL_MESSAGE:
        errors["invite_message"] = (
            f"{PERSONAL_MESSAGE_TOO_LONG} It has {len(message):,}; shorten it and send again."
        )
    return values, errors


def invite_options(request: web.Request, email: str, values: dict[str, str]) -> dict[str, Any]:
    """The Invite Client box's fields as the invitations service takes them (an empty
    choice left out: the setting or the agency's language decides)."""
    admin = current_user(request)
    body: dict[str, Any] = {"email": email, "invited_by": admin["email"] if admin else None}
    if values["expires_in_days"]:
        body["expires_in_days"] = int(values["expires_in_days"])
    if values["locale"]:
        body["locale"] = values["locale"]
    message = values["personal_message"].replace("\r\n", "\n").strip()
    if message:
        body["personal_message"] = message
    return body


@routes.post(f"/admin/portals/{ID}/invite")
async def invite(request: web.Request) -> web.StreamResponse:
    up = request.app[UPSTREAM]
    portal = await up.portals.get(request.match_info["id"])
    form = await request.post()
    values, errors = invite_fields(form)
    email = email_or_none(values["email"])
    if not errors and portal["status"] != "active":
        errors["invite_email"] = NOT_ACTIVE
    if not errors and email is not None:
        body = {"portal_id": portal["id"], **invite_options(request, email, values)}
        key = send_key(form_str(form, "send_key", 100), portal["id"], email)
        try:
            result = await _send_once(up, body, key)
        except DomainError as exc:
            if exc.status >= 500 or exc.code == "portal_not_found":
                raise
            field = INVITE_ERROR_FIELDS.get(exc.code, "invite_email")
            errors[field] = INVITE_ERRORS.get(exc.code, exc.message)
        else:
            key = (
                "invitation_sent" if result["outcome"] == "created" else "invitation_resent_pending"
            )
            return see_other(request, f"/admin/portals/{portal['id']}", flash=key, email=email)
    return await _editor(request, portal, errors=errors, status=422, invite=values)


async def _send_once(up: Upstream, body: dict[str, Any], key: str | None) -> InviteOutcome:
    """Invite under the form's key (send_key), so that a double click on Send Invitation
    or the back button's post of the same form sends one email, not a new link each time
    that kills the one before. Under a key whose invitation was revoked or has expired
    meanwhile, the form invites again, as a post without a key (an older page) does."""
    if key is None:
        return await up.invitations.invite(body)
    result = await up.invitations.invite({**body, "idempotency_key": key})
    if result["invitation"]["status"] != "pending":  # what the key made is over
        return await up.invitations.invite(body)
    return result


@routes.get("/admin/users/search")
async def user_search(request: web.Request) -> web.StreamResponse:
    q = request.query.get("q", "")[:100]
    page = await request.app[UPSTREAM].identity.list_users(q=q or None, limit=20)
    items = [{"id": u["id"], "email": u["email"]} for u in page["items"] if not u["disabled"]]
    return json_response({"items": items})
