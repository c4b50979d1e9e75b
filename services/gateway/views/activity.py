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
from libs.common.cursor import Cursor
from libs.common.text import isolated
from libs.common.web import json_response, parse_query

from .. import contracts
from ..answers import ActivityActor, ActivityEntry, ActivityPage, PortalAnswer
from ..contracts import ActivityAction
from ..domain import parse_uuid
from ..i18n import N_, gettext, ngettext
from ..rendering import page_language, render
from ..state import UPSTREAM
from .api import API

PAGE_ROWS = 50
# Words the screen shows in the reader's language (English msgids).
ROLE_NAMES = {"administrator": N_("Administrator"), "staff": N_("Staff"), "client": N_("Client")}
SETTING_NAMES = {
    "invitation_expiry_days": N_("Invitation Link Expiry"),
    "invitation_reminder_days": N_("Invitation Reminder"),
    "login_redirect": N_("Login Redirect"),
}
STATUS_NAMES = {"active": N_("Active"), "pending": N_("Pending"), "archived": N_("Archived")}
# The labels identity gives settings entries (services/identity/consumer.py).
SETTINGS_LABELS = (N_("Access & Login"), N_("Branding"))

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
    cursor: Cursor | None = None


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
        return gettext("On") if value else gettext("Off")
    if name == "invitation_reminder_days" and value == 0:
        return gettext("Off")
    if isinstance(value, int):
        return ngettext("%(count)s day", "%(count)s days", value, count=value)
    # Text a person typed (an Agency Name, a Footer Text), isolated within the sentence:
    # a right-to-left one can't pull "(was …)" into its own order.
    return isolated(str(value))


def _named(names: dict[str, str], key: str) -> str:
    return gettext(names[key]) if key in names else key


def describe(entry: ActivityEntry) -> str:
    """What changed, in words, for the screen's Details column, in the page's language."""
    details = entry.get("details") or {}
    action = entry["action"]
    if action == "user.role_changed":
        role, before = details.get("role", ""), details.get("previous_role", "")
        return gettext(
            "%(role)s (was %(previous)s)",
            role=_named(ROLE_NAMES, role),
            previous=_named(ROLE_NAMES, before),
        )
    if action in ("portal.created", "portal.updated") and "status" in details:
        status = str(details["status"])
        return gettext("Status: %(status)s", status=_named(STATUS_NAMES, status))
    if action == "portal.access_granted" and details.get("role"):
        return gettext(N_("Sub-Client") if details["role"] == "sub_client" else N_("Client"))
    if action == "settings.changed":
        changes, previous = details.get("changes", {}), details.get("previous", {})
        return "; ".join(
            gettext(
                "%(setting)s: %(value)s (was %(previous)s)",
                setting=_named(SETTING_NAMES, k),
                value=_setting(k, v),
                previous=_setting(k, previous[k]),
            )
            if k in previous
            else gettext(
                "%(setting)s: %(value)s", setting=_named(SETTING_NAMES, k), value=_setting(k, v)
            )
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
    portals: list[PortalAnswer]
    page, actors, portals = await asyncio.gather(
        up.identity.activity(actor, action or None, portal_id, PAGE_ROWS, cursor),
        up.identity.activity_actors(),
        up.portals.choices(portal_id),
    )
    titles = {p["id"]: p["title"] for p in portals}
    filters = {
        k: v for k, v in {"actor": actor, "action": action, "portal_id": portal_id}.items() if v
    }
    next_url = None
    if page.get("next_cursor"):
        next_url = "/admin/activity?" + urlencode({**filters, "cursor": page["next_cursor"]})
    page_language(request)  # the details below in the reader's language
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
        "portals": portals,
        "actor": actor or "",
        "action": action,
        "portal_id": portal_id or "",
        "filtered": bool(filters),
        "next_url": next_url,
    }
    return render(request, "admin/activity.html", context)
