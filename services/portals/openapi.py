"""The portals API's OpenAPI 3.1 document, built from the pydantic models the views parse
with, so the description can't drift from what is accepted."""

from __future__ import annotations

from typing import Any

from libs.common.openapi import TIME, UUID, Operation, openapi_route, page_of, path_parameter

from . import api
from .domain import SLUG_MAX, SLUG_PATTERN

PORTAL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": UUID,
        "title": {"type": "string"},
        "slug": {"type": "string"},
        "content": {"type": ["string", "null"], "description": "Markdown"},
        "content_html": {"type": ["string", "null"], "description": "sanitised HTML"},
        "status": {"type": "string", "enum": ["active", "pending", "archived"]},
        "client_id": {"type": ["string", "null"], "format": "uuid"},
        "sub_client_ids": {"type": "array", "items": UUID},
        "revision": {"type": "integer"},
        "created_at": TIME,
        "updated_at": TIME,
    },
}
ROLE = {"type": "string", "enum": ["client", "sub_client"]}
PAGE = page_of(PORTAL)
GRANTED = {"type": "object", "properties": {"portal": PORTAL, "role": ROLE}}
USER_PORTAL = {
    "type": "object",
    "description": "the portal (content null unless Active) and the user's role in it",
    "properties": {**PORTAL["properties"], "role": ROLE},
}
USER_PORTALS = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": USER_PORTAL}},
}
USERS_PORTALS = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "user_id": {"type": "string", "format": "uuid"},
                    "portals": {"type": "array", "items": USER_PORTAL},
                },
            },
        }
    },
}
ID = path_parameter("portal_id")
USER = path_parameter("user_id")
SLUG = path_parameter(
    "slug", {"type": "string", "pattern": SLUG_PATTERN, "maxLength": SLUG_MAX}
)  # anything else: 404 portal_not_found
NOT_FOUND = ["404 portal_not_found"]

OPERATIONS: list[Operation] = [
    ("post", "/portals", "Create a portal (Pending unless a status is given)",
     api.CreatePortal, None, [], 201, PORTAL, ["409 slug_taken", "422 content_too_large"]),
    ("get", "/portals", "List portals, newest first", None, api.ListQuery, [], 200, PAGE,
     ["422 invalid_cursor"]),
    ("get", "/portals/by-slug/{slug}", "Get a portal by its slug", None, None, [SLUG], 200,
     PORTAL, NOT_FOUND),
    ("get", "/portals/{portal_id}", "Get a portal", None, None, [ID], 200, PORTAL, NOT_FOUND),
    ("patch", "/portals/{portal_id}", "Change title, slug, content or status", api.PatchPortal,
     None, [ID], 200, PORTAL,
     [*NOT_FOUND, "409 slug_taken", "409 portal_changed", "422 content_too_large"]),
    ("put", "/portals/{portal_id}/client", "Set (or clear) the primary Client", api.SetClient,
     None, [ID], 200, PORTAL, [*NOT_FOUND, "422 user_disabled"]),
    ("put", "/portals/{portal_id}/sub-clients", "Replace the Sub-Clients", api.SetSubClients,
     None, [ID], 200, PORTAL, [*NOT_FOUND, "422 user_disabled"]),
    ("post", "/portals/{portal_id}/access",
     "Grant a user access (idempotent under grant_key): the primary Client if the portal has"
     " none, else a Sub-Client, unless the role is given", api.GrantAccess, None, [ID], 200,
     GRANTED, [*NOT_FOUND, "409 grant_key_conflict", "422 user_disabled"]),
    ("post", "/users/portals", "The portals of each of these users (at most 200), with the role",
     api.UsersPortalsBody, None, [], 200, USERS_PORTALS, ["422"]),
    ("get", "/users/{user_id}/portals", "The portals a user may open, with the role",
     None, None, [USER], 200, USER_PORTALS, ["422 invalid_user_id"]),
    ("get", "/users/{user_id}/portals/{slug}", "One of a user's portals, by slug", None, None,
     [USER, SLUG], 200, USER_PORTAL, [*NOT_FOUND, "422 invalid_user_id"]),
]  # fmt: skip


openapi = openapi_route("ClientPress portals (internal)", OPERATIONS)
