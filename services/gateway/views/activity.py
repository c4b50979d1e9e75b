"""The Activity log: GET /api/v1/activity and the Activity screen (administrators only:
security.ADMIN_ONLY_API and ADMINISTRATOR_PAGES). Identity keeps the log, built from the
events that carry their actor (docs/design.md "Activity")."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import urlencode
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from libs.common.activity import ACTIONS
from libs.common.web import json_response, parse_query

from .. import contracts
from ..answers import ActivityActor, ActivityEntry, ActivityPage, PortalPage
from ..contracts import ActivityAction
from ..domain import parse_uuid
from ..rendering import render
from ..state import UPSTREAM
from .api import API

PAGE_ROWS = 50
ROLE_NAMES = {"administrator": "Administrator", "staff": "Staff", "client": "Client"}
SETTING_NAMES = {
    "invitation_expiry_days": "Invitation Link Expiry",
    "invitation_reminder_days": "Invitation Reminder",
    "login_redirect": "Login Redirect",
}

routes = web.RouteTableDef()


class ActivityQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=100,
                description="an actor's id: a user's or a key's (bootstrap for GATEWAY_API_KEY)",
            ),
        ]
        | None
    ) = None
    action: ActivityAction | None = None
    portal_id: UUID | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, Field(max_length=500)] | None = None


@API.get(
    "/activity",
    "The Activity log: every change a staff member or a key made, newest first"
    " (administrators and the bootstrap key)",
    query=ActivityQuery,
    response=contracts.ActivityPage,
    errors=["422 invalid_cursor"],
)
async def list_activity(request: web.Request) -> web.StreamResponse:
    q = parse_query(request, ActivityQuery)
    page = await request.app[UPSTREAM].identity.activity(
        q.actor, q.action, str(q.portal_id) if q.portal_id else None, q.limit, q.cursor
    )
    return json_response(page)


def _setting(name: str, value: Any) -> str:
    if name == "login_redirect":
        return "On" if value else "Off"
    if name == "invitation_reminder_days" and value == 0:
        return "Off"
    return f"{value} days"


def describe(entry: ActivityEntry) -> str:
    """What changed, in words, for the screen's Details column."""
    details = entry.get("details") or {}
    action = entry["action"]
    if action == "user.role_changed":
        role, before = details.get("role", ""), details.get("previous_role", "")
        return f"{ROLE_NAMES.get(role, role)} (was {ROLE_NAMES.get(before, before)})"
    if action in ("portal.created", "portal.updated") and "status" in details:
        return f"Status: {str(details['status']).capitalize()}"
    if action == "portal.access_granted" and details.get("role"):
        return "Sub-Client" if details["role"] == "sub_client" else "Client"
    if action == "settings.changed":
        changes, previous = details.get("changes", {}), details.get("previous", {})
        return "; ".join(
            f"{SETTING_NAMES.get(k, k)}: {_setting(k, v)}"
            + (f" (was {_setting(k, previous[k])})" if k in previous else "")
            for k, v in changes.items()
        )
    if action == "key.created":
        return ", ".join(details.get("scopes", []))
    return ""


@routes.get("/admin/activity")
async def activity_page(request: web.Request) -> web.StreamResponse:
    up = request.app[UPSTREAM]
    actor = request.query.get("actor", "")[:100] or None
    action = request.query.get("action", "")
    action = action if action in ACTIONS else ""
    portal_id = parse_uuid(request.query.get("portal_id", ""))
    cursor = request.query.get("cursor", "")[:500] or None
    # Declared: an entry's details (dict[str, Any]) would leave gather's answer untyped.
    page: ActivityPage
    actors: list[ActivityActor]
    portals: PortalPage
    page, actors, portals = await asyncio.gather(
        up.identity.activity(actor, action or None, portal_id, PAGE_ROWS, cursor),
        up.identity.activity_actors(),
        up.portals.find(limit=200),
    )
    titles = {p["id"]: p["title"] for p in portals["items"]}
    filters = {
        k: v for k, v in {"actor": actor, "action": action, "portal_id": portal_id}.items() if v
    }
    next_url = None
    if page.get("next_cursor"):
        next_url = "/admin/activity?" + urlencode({**filters, "cursor": page["next_cursor"]})
    rows = [
        {
            **entry,
            "action_label": ACTIONS.get(entry["action"], entry["action"]),
            "portal_title": titles.get(entry.get("portal_id") or "", ""),
            "description": describe(entry),
        }
        for entry in page["items"]
    ]
    context = {
        "rows": rows,
        "actors": actors,
        "actions": ACTIONS,
        "portals": portals["items"],
        "actor": actor or "",
        "action": action,
        "portal_id": portal_id or "",
        "filtered": bool(filters),
        "next_url": next_url,
    }
    return render(request, "admin/activity.html", context)
