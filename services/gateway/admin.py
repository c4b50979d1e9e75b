"""Administrator pages: Invitations, Settings (Access & Login) and Users. The role
gate is in security._gate, for every /admin path."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from libs.common.errors import InvalidInput

from .domain import EXPIRY_CHOICES, INVITATION_STATUSES, parse_uuid
from .rendering import current_user, form_str, render, see_other
from .state import UPSTREAM

ID = "{id:[0-9a-fA-F-]{36}}"

routes = web.RouteTableDef()


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
    page, portals = await asyncio.gather(
        up.invitations.find(status=status, portal_id=portal_id, limit=50, cursor=cursor),
        up.portals.find(limit=200),
    )
    query = {"status": status or "all", **({"portal_id": portal_id} if portal_id else {})}
    next_url = None
    if page.get("next_cursor"):
        next_url = "/admin/invitations?" + urlencode({**query, "cursor": page["next_cursor"]})
    context = {
        "invitations": page["items"],
        "portals": portals["items"],
        "status": status or "all",
        "portal_id": portal_id or "",
        "statuses": INVITATION_STATUSES,
        "next_url": next_url,
        "back": request.path_qs,
    }
    return render(request, "admin/invitations.html", context)


def _back(form: MultiDictProxy[Any]) -> str:
    back = form_str(form, "back", 2000)
    return (
        back if back.startswith("/admin/invitations") and "\\" not in back else "/admin/invitations"
    )


@routes.post(f"/admin/invitations/{ID}/resend")
async def resend(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    invitation = await request.app[UPSTREAM].invitations.resend(request.match_info["id"])
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
    context = {
        "expiry": access["invitation_expiry_days"],
        "login_redirect": login["login_redirect"],
        "choices": EXPIRY_CHOICES,
        "errors": {},
    }
    return render(request, "admin/settings.html", context)


@routes.post("/admin/settings")
async def save_settings(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    raw = form_str(form, "invitation_expiry_days", 10)
    login_redirect = form_str(form, "login_redirect", 10) == "on"
    if raw not in {str(c) for c in EXPIRY_CHOICES}:
        context = {
            "expiry": 14,
            "login_redirect": login_redirect,
            "choices": EXPIRY_CHOICES,
            "errors": {"expiry": "Choose 7, 14, 21 or 30 days."},
        }
        return render(request, "admin/settings.html", context, status=422)
    up = request.app[UPSTREAM]
    await up.invitations.put_access_settings(int(raw))
    await up.identity.put_login_settings(login_redirect)
    return see_other(request, "/admin/settings", flash="settings_saved")


@routes.get("/admin/users")
async def user_list(request: web.Request) -> web.StreamResponse:
    up = request.app[UPSTREAM]
    q = request.query.get("q", "")[:100]
    cursor = request.query.get("cursor") or None
    page = await up.identity.list_users(q=q or None, limit=50, cursor=cursor)
    users = page["items"]
    portal_lists = await asyncio.gather(*(up.portals.of_user(u["id"]) for u in users))
    next_url = None
    if page.get("next_cursor"):
        next_url = "/admin/users?" + urlencode({"q": q, "cursor": page["next_cursor"]})
    rows = list(zip(users, portal_lists, strict=True))
    return render(request, "admin/users.html", {"rows": rows, "q": q, "next_url": next_url})


@routes.post(f"/admin/users/{ID}/disable")
async def disable_user(request: web.Request) -> web.StreamResponse:
    me = current_user(request) or {}
    user_id = request.match_info["id"]
    if parse_uuid(user_id) == me.get("id"):
        raise InvalidInput("You can't disable your own account.", code="cannot_disable_self")
    user = await request.app[UPSTREAM].identity.disable_user(user_id)
    return see_other(request, "/admin/users", flash="user_disabled", email=user["email"])
