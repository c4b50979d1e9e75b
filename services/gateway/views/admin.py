"""Admin pages: Invitations (Administrators and Staff), Settings (Access & Login) and
Users (Administrators). The role gate is in security._gate, for every /admin path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from libs.common.email import email_or_none
from libs.common.errors import Conflict, DomainError, InvalidInput, NotFound, RateLimited

from ..answers import InvitationAnswer, InvitationCounts, InvitationPage
from ..domain import (
    BULK_FLASH,
    BULK_VERBS,
    EXPIRY_CHOICES,
    INVITATION_STATUSES,
    REMINDER_CHOICES,
    bulk_payload,
    new_send_key,
    parse_uuid,
    safe_next_path,
)
from ..i18n import N_, gettext
from ..rendering import (
    current_user,
    error_page,
    form_str,
    page_language,
    render,
    see_other,
)
from ..state import UPSTREAM
from ..upstream import Invitations

ID = "{id:[0-9a-fA-F-]{36}}"
SEARCH_ERROR = N_("Enter a whole email address, like name@example.com.")
TABS = (("all", "All"), *((s, s.capitalize()) for s in INVITATION_STATUSES))
# One Resend / Revoke acts on at most this many selected rows (a page shows 50).
MAX_SELECTED = 200
BULK_CONCURRENCY = 8

routes = web.RouteTableDef()
# An invitation the selected rows' Resend / Revoke acted on, and why it was refused.
Outcome = tuple[str, str | None]


@routes.get("/admin")
@routes.get("/admin/")
async def admin_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/admin/portals")


def _invitation_filters(request: web.Request) -> tuple[str | None, str | None]:
    status = request.query.get("status", "pending")
    portal_id = parse_uuid(request.query.get("portal_id", ""))
    return (status if status in INVITATION_STATUSES else None), portal_id


@routes.get("/admin/invitations")
async def invitation_list(request: web.Request) -> web.StreamResponse:
    up = request.app[UPSTREAM]
    status, portal_id = _invitation_filters(request)
    cursor = request.query.get("cursor") or None
    searched = request.query.get("email", "")[:320].strip()
    email = email_or_none(searched) if searched else None
    portals = await up.portals.choices(portal_id)
    if searched and email is None:
        page: InvitationPage = {"items": [], "next_cursor": None}
        counts: InvitationCounts | dict[str, int] = {}
    else:
        page, counts = await asyncio.gather(
            up.invitations.find(
                status=status, portal_id=portal_id, limit=50, cursor=cursor, email=email
            ),
            up.invitations.counts(portal_id=portal_id, email=email),
        )
    filters = {
        **({"portal_id": portal_id} if portal_id else {}),
        **({"email": searched} if searched else {}),
    }
    query = {"status": status or "all", **filters}
    next_url = None
    if page.get("next_cursor"):
        next_url = "/admin/invitations?" + urlencode({**query, "cursor": page["next_cursor"]})
    tabs = [
        {
            "key": key,
            "label": label,
            "count": counts.get(key, 0),
            "url": "/admin/invitations?" + urlencode({"status": key, **filters}),
        }
        for key, label in TABS
    ]
    context = {
        "invitations": page["items"],
        "portals": portals,
        "status": status or "all",
        "portal_id": portal_id or "",
        "email": searched,
        "errors": {"search_email": SEARCH_ERROR} if searched and email is None else {},
        "tabs": tabs,
        "next_url": next_url,
        "back": request.path_qs,
    }
    return render(request, "admin/invitations.html", context)


@routes.post("/admin/invitations/bulk")
async def bulk(request: web.Request) -> web.StreamResponse:
    """Resend or Revoke every selected invitation, each on its own: one refused (already
    accepted, revoked) doesn't stop the others, and the answer says what happened to which."""
    form = await request.post()
    action = form_str(form, "action", 10)
    if action not in BULK_VERBS:
        raise InvalidInput(N_("Choose Resend or Revoke."), code="invalid_action")
    chosen = [parse_uuid(v) for v in form.getall("ids", []) if isinstance(v, str)]
    ids = list(dict.fromkeys(i for i in chosen if i is not None))
    if not ids:
        return see_other(request, _back(form), flash="bulk_none")
    if len(ids) > MAX_SELECTED:
        page_language(request)
        raise InvalidInput(
            gettext("Select at most %(max)s invitations at a time.", max=MAX_SELECTED),
            code="too_many_selected",
        )
    invitations = request.app[UPSTREAM].invitations
    gate = asyncio.Semaphore(BULK_CONCURRENCY)

    async def act(invitation_id: str) -> InvitationAnswer:
        if action == "revoke":
            return await invitations.revoke(invitation_id)
        # The sent time its row showed: posted twice (a double click, the back button),
        # the selection is resent once.
        shown = shown_sent_at(form, f"sent_at:{invitation_id}")
        return await invitations.resend(invitation_id, shown_sent_at=shown)

    async def one(invitation_id: str) -> tuple[str, str | None]:
        async with gate:
            try:
                await act(invitation_id)
            except DomainError as exc:
                return invitation_id, ("unavailable" if exc.status >= 500 else exc.code)
            return invitation_id, None

    async def email_of(invitation_id: str) -> str | None:
        try:
            found = await invitations.get(invitation_id)
        except DomainError:
            return None
        return str(found["email"])

    async def group(members: list[str]) -> list[tuple[str, str | None]]:
        """Selected invitations of one group (several portals, one invitation): a Resend
        of one sends the group's link for each of them that can take it, in one email, so
        the others are resent by it, not by an email each."""
        done: list[tuple[str, str | None]] = []
        sent_at = None
        for invitation_id in members:
            if sent_at is not None:
                async with gate:
                    try:
                        now: InvitationAnswer | None = await invitations.get(invitation_id)
                    except DomainError:
                        now = None
                if now is not None and now["sent_at"] == sent_at:
                    done.append((invitation_id, None))
                    continue
            async with gate:
                try:
                    resent = await act(invitation_id)
                except DomainError as exc:
                    done.append((invitation_id, "unavailable" if exc.status >= 500 else exc.code))
                    continue
            sent_at = resent.get("sent_at")
            done.append((invitation_id, None))
        return done

    tasks: list[Awaitable[Outcome | list[Outcome]]]
    if action == "resend":
        tasks = await _by_group(invitations, ids, gate, one, group)
    else:
        tasks = [one(i) for i in ids]
    outcomes = [o for found in await asyncio.gather(*tasks) for o in _each(found)]
    refused = [(i, code) for i, code in outcomes if code is not None]
    emails = await asyncio.gather(*(email_of(i) for i, _ in refused))
    failed: dict[str, list[str | None]] = {}
    for (_, code), address in zip(refused, emails, strict=True):
        failed.setdefault(code, []).append(address)
    payload = bulk_payload(action, len(ids) - len(refused), failed)
    return see_other(request, _back(form), flash=BULK_FLASH, email=payload)


def _each(found: Outcome | list[Outcome]) -> list[Outcome]:
    return found if isinstance(found, list) else [found]


async def _by_group(
    invitations: Invitations,
    ids: list[str],
    gate: asyncio.Semaphore,
    one: Callable[[str], Awaitable[Outcome]],
    group: Callable[[list[str]], Awaitable[list[Outcome]]],
) -> list[Awaitable[Outcome | list[Outcome]]]:
    """One task per selected invitation, but one per group for the invitations of a group
    (which one Resend sends together)."""

    async def group_of(invitation_id: str) -> str | None:
        async with gate:
            try:
                found = await invitations.get(invitation_id)
            except DomainError:
                return None
        value = found.get("group_id")
        return str(value) if value else None

    groups: dict[str, list[str]] = {}
    tasks: list[Awaitable[Outcome | list[Outcome]]] = []
    for invitation_id, group_id in zip(
        ids, await asyncio.gather(*(group_of(i) for i in ids)), strict=True
    ):
        if group_id is None:
            tasks.append(one(invitation_id))
        else:
            groups.setdefault(group_id, []).append(invitation_id)
    tasks.extend(group(members) for members in groups.values())
    return tasks


INVITATIONS = "/admin/invitations"


def _back(form: MultiDictProxy[Any]) -> str:
    """Where Resend and Revoke return: the Invitations screen as it was filtered. The
    hidden field is the browser's to change, so only that screen, as a safe local path (a
    line break in it would end the answer as a dropped connection)."""
    back = safe_next_path(form_str(form, "back", 2000))
    if back is not None and (back == INVITATIONS or back.startswith(INVITATIONS + "?")):
        return back
    return INVITATIONS


def shown_sent_at(form: MultiDictProxy[Any], field: str = "sent_at") -> str | None:
    """The sent time the row showed, so that its Resend posted twice (a double click, the
    back button) sends one email; None when missing or not a time (the browser's to
    change): then it resends, as an older page's form does."""
    raw = form_str(form, field, 64)
    try:
        return datetime.fromisoformat(raw).isoformat() if raw else None
    except ValueError:
        return None


# Resends the invitations service refuses with a reason for the person at the screen.
RESEND_REFUSALS = frozenset({"portal_not_active", "send_rate_limited"})


@routes.post(f"/admin/invitations/{ID}/resend")
async def resend(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    try:
        invitation = await request.app[UPSTREAM].invitations.resend(
            request.match_info["id"], shown_sent_at=shown_sent_at(form)
        )
    except DomainError as exc:
        if exc.code not in RESEND_REFUSALS:
            raise
        # Its status (409, or 429 with Retry-After) and the reason, with the time the next
        # email can go when a cap said no; the way back to the list.
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        return error_page(
            request,
            exc.status,
            N_("Not resent"),
            exc.message,
            headers,
            link=(_back(form), N_("Back to Invitations")),
        )
    return see_other(request, _back(form), flash="invitation_resent", email=invitation["email"])


@routes.post(f"/admin/invitations/{ID}/revoke")
async def revoke(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    invitation = await request.app[UPSTREAM].invitations.revoke(request.match_info["id"])
    return see_other(request, _back(form), flash="invitation_revoked", email=invitation["email"])


@routes.get("/admin/settings")
async def settings_form(request: web.Request) -> web.StreamResponse:
    up = request.app[UPSTREAM]
    access, login = await asyncio.gather(
        up.invitations.access_settings(), up.identity.login_settings()
    )
    context: dict[str, Any] = {
        "expiry": access["invitation_expiry_days"],
        "reminder": access.get("invitation_reminder_days", 0),
        "login_redirect": login["login_redirect"],
        "choices": EXPIRY_CHOICES,
        "reminder_choices": REMINDER_CHOICES,
        "errors": {},
    }
    return render(request, "admin/settings.html", context)


@routes.post("/admin/settings")
async def save_settings(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    raw = form_str(form, "invitation_expiry_days", 10)
    # Left out (an older form): unchanged.
    raw_reminder = form_str(form, "invitation_reminder_days", 10) or None
    login_redirect = form_str(form, "login_redirect", 10) == "on"
    errors = {}
    if raw not in {str(c) for c in EXPIRY_CHOICES}:
        errors["expiry"] = N_("Choose 7, 14, 21 or 30 days.")
    if raw_reminder is not None and raw_reminder not in {str(d) for d, _ in REMINDER_CHOICES}:
        errors["reminder"] = N_("Choose Off, 1 day before expiry or 3 days before expiry.")
    if errors:
        context = {
            "expiry": int(raw) if "expiry" not in errors else 14,
            "reminder": int(raw_reminder) if raw_reminder and "reminder" not in errors else 0,
            "login_redirect": login_redirect,
            "choices": EXPIRY_CHOICES,
            "reminder_choices": REMINDER_CHOICES,
            "errors": errors,
        }
        return render(request, "admin/settings.html", context, status=422)
    up = request.app[UPSTREAM]
    reminder = int(raw_reminder) if raw_reminder is not None else None
    await up.invitations.put_access_settings(int(raw), reminder)
    await up.identity.put_login_settings(login_redirect)
    return see_other(request, "/admin/settings", flash="settings_saved")


ROLE_NAMES = {"administrator": "Administrator", "staff": "Staff", "client": "Client"}
# The roles Invite Staff offers.
STAFF_ROLE_NAMES = {"staff": "Staff", "administrator": "Administrator"}


async def _users_page(
    request: web.Request,
    *,
    error: str | None = None,
    status: int = 200,
    invite: dict[str, str] | None = None,
    invite_errors: dict[str, str] | None = None,
) -> web.Response:
    """The Users screen; ``invite`` / ``invite_errors``: the Invite Staff form as it was
    sent, and what is wrong with it (services/gateway/views/staff.py)."""
    up = request.app[UPSTREAM]
    q = request.query.get("q", "")[:100]
    cursor = request.query.get("cursor") or None
    page, staff_invitations = await asyncio.gather(
        up.identity.list_users(q=q or None, limit=50, cursor=cursor),
        up.invitations.staff_invitations(),
    )
    users = page["items"]
    # One request for the page's users, not one a row.
    portals_of = await up.portals.of_users([u["id"] for u in users])
    portal_lists = [portals_of.get(u["id"], []) for u in users]
    next_url = None
    if page.get("next_cursor"):
        next_url = "/admin/users?" + urlencode({"q": q, "cursor": page["next_cursor"]})
    rows = list(zip(users, portal_lists, strict=True))
    context = {
        "rows": rows,
        "q": q,
        "next_url": next_url,
        "roles": ROLE_NAMES,
        "error": error,
        "staff_roles": STAFF_ROLE_NAMES,
        "staff_invitations": staff_invitations,
        "invite": invite or {"role": "staff"},
        "errors": invite_errors or {},
        # The Invite Staff form's own id: posted twice, it sends once (staff.invite_staff).
        "send_key": new_send_key(),
    }
    return render(request, "admin/users.html", context, status=status)


@routes.get("/admin/users")
async def user_list(request: web.Request) -> web.StreamResponse:
    return await _users_page(request)


def _not_me(request: web.Request, refusal: str, code: str) -> str:
    """The user id of the path, unless it is the administrator's own (no one locks
    themselves out by a slip of the mouse)."""
    me = current_user(request)
    user_id = request.match_info["id"]
    if me is not None and parse_uuid(user_id) == me["id"]:
        raise InvalidInput(refusal, code=code)
    return user_id


@routes.post(f"/admin/users/{ID}/disable")
async def disable_user(request: web.Request) -> web.StreamResponse:
    await request.post()
    try:
        user_id = _not_me(request, N_("You can't disable your own account."), "cannot_disable_self")
        user = await request.app[UPSTREAM].identity.disable_user(user_id)
    except (Conflict, InvalidInput) as exc:
        return await _users_page(request, error=exc.message, status=exc.status)
    return see_other(request, "/admin/users", flash="user_disabled", email=user["email"])


@routes.post(f"/admin/users/{ID}/erase")
async def erase_user(request: web.Request) -> web.StreamResponse:
    """The right to erasure (docs/reliability.md "Erasing a person"): the confirmation in
    the page says it can't be undone."""
    await request.post()
    try:
        user_id = _not_me(request, N_("You can't erase your own account."), "cannot_erase_self")
        user = await request.app[UPSTREAM].identity.erase_user(user_id)
    except (Conflict, InvalidInput) as exc:
        return await _users_page(request, error=exc.message, status=exc.status)
    except NotFound:
        # Erase clicked twice, or by two administrators at once: the first one erased it.
        return see_other(request, "/admin/users", flash="user_gone")
    return see_other(request, "/admin/users", flash="user_erased", email=user["email"])


@routes.post(f"/admin/users/{ID}/enable")
async def enable_user(request: web.Request) -> web.StreamResponse:
    await request.post()
    user = await request.app[UPSTREAM].identity.enable_user(request.match_info["id"])
    return see_other(request, "/admin/users", flash="user_enabled", email=user["email"])


@routes.post(f"/admin/users/{ID}/role")
async def change_role(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    role = form_str(form, "role", 20)
    if role not in ROLE_NAMES:
        return await _users_page(
            request, error=N_("Choose a role: Administrator, Staff or Client."), status=422
        )
    try:
        user_id = _not_me(
            request, N_("You can't change the role of your own account."), "cannot_change_own_role"
        )
        user = await request.app[UPSTREAM].identity.set_role(user_id, role)
    except (Conflict, InvalidInput) as exc:
        return await _users_page(request, error=exc.message, status=exc.status)
    return see_other(request, "/admin/users", flash="role_changed", email=user["email"])
