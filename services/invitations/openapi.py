"""The invitations API's OpenAPI 3.1 document, built from the pydantic models the views
parse with, so the description can't drift from what is accepted."""

from __future__ import annotations

from libs.common.openapi import NULL_TIME, TIME, UUID, Operation, openapi_route

from . import api

INVITATION = {
    "type": "object",
    "properties": {
        "id": UUID,
        "email": {"type": "string"},
        "portal_id": UUID,
        "portal_title": {"type": ["string", "null"]},
        "portal_slug": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["pending", "accepted", "expired", "revoked"]},
        "sent_at": TIME,
        "expires_at": TIME,
        "delivery": {"type": "string", "enum": ["queued", "sent", "failed"]},
        "delivery_error": {"type": ["string", "null"]},
        "sub_client": {"type": ["boolean", "null"]},
        "invited_by": {"type": ["string", "null"]},
        "accepted_at": NULL_TIME,
        "revoked_at": NULL_TIME,
        "created_at": TIME,
        "send_count": {"type": "integer"},
    },
}
OUTCOME = {
    "type": "object",
    "properties": {
        "invitation": INVITATION,
        "outcome": {"type": "string", "enum": ["created", "resent"]},
    },
}
PAGE = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": INVITATION},
        "next_cursor": {"type": ["string", "null"]},
    },
}
VALIDATED = {
    "type": "object",
    "properties": {
        "invitation_id": UUID,
        "email": {"type": "string"},
        "portal_id": UUID,
        "portal_title": {"type": ["string", "null"]},
        "portal_slug": {"type": ["string", "null"]},
        "expires_at": TIME,
        "account_exists": {"type": "boolean"},
        "sub_client": {"type": ["boolean", "null"]},
    },
}
ACCESS = api.AccessSettings.model_json_schema()
ID = {"name": "id", "in": "path", "required": True, "schema": UUID}
TOKEN_ERRORS = [
    "404 invitation_invalid",
    "409 invitation_used",
    "410 invitation_expired",
    "410 invitation_revoked",
]

OPERATIONS: list[Operation] = [
    ("post", "/invitations", "Invite a person to a portal (or resend their pending one)",
     api.InviteBody, None, [], 201, OUTCOME,
     ["200 outcome=resent", "422 invalid_email", "404 portal_not_found",
      "409 portal_not_active", "409 already_has_access", "503 identity_unavailable"]),
    ("get", "/invitations", "List invitations, newest first", None, api.ListQuery, [], 200,
     PAGE, ["422 invalid_cursor"]),
    ("get", "/invitations/validate", "Check a link without using it", None, api.TokenQuery,
     [], 200, VALIDATED, [*TOKEN_ERRORS, "503 identity_unavailable"]),
    ("post", "/invitations/accept", "Use a link: pending to accepted, exactly once",
     api.AcceptBody, None, [], 200, INVITATION, TOKEN_ERRORS),
    ("get", "/invitations/{id}", "Get an invitation", None, None, [ID], 200, INVITATION,
     ["404 invitation_not_found"]),
    ("post", "/invitations/{id}/resend", "New link and expiry; the old link dies", None, None,
     [ID], 200, INVITATION,
     ["404 invitation_not_found", "409 invitation_accepted", "409 invitation_revoked",
      "409 invitation_pending"]),
    ("post", "/invitations/{id}/revoke", "Invalidate the link", None, None, [ID], 200,
     INVITATION, ["404 invitation_not_found", "409 invitation_accepted"]),
    ("get", "/settings/access", "Invitation Link Expiry", None, None, [], 200, ACCESS, []),
    ("put", "/settings/access", "Set Invitation Link Expiry (7, 14, 21 or 30 days)",
     api.AccessSettings, None, [], 200, ACCESS, ["422 invalid_expiry_days"]),
]  # fmt: skip


openapi = openapi_route("ClientPress invitations (internal)", OPERATIONS)
