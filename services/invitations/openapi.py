"""The invitations API's OpenAPI 3.1 document, built from the pydantic models the views
parse with, so the description can't drift from what is accepted."""

from __future__ import annotations

from libs.common.openapi import NULL_TIME, TIME, UUID, Operation, openapi_route, page_of

from . import api

ROLE = {
    "type": ["string", "null"],
    "enum": ["administrator", "staff", None],
    "description": "a staff invitation's role (Users → Invite Staff); null for a client's",
}
LOCALE = {
    "type": ["string", "null"],
    "enum": ["en", "de", "fr", "es", None],
    "description": "the language of its emails and pages; null: the agency's Language",
}
INVITATION = {
    "type": "object",
    "properties": {
        "id": UUID,
        "email": {"type": "string"},
        "portal_id": {**UUID, "type": ["string", "null"], "description": "null: staff"},
        "portal_title": {"type": ["string", "null"]},
        "portal_slug": {"type": ["string", "null"]},
        "role": ROLE,
        "status": {"type": "string", "enum": ["pending", "accepted", "expired", "revoked"]},
        "sent_at": TIME,
        "expires_at": TIME,
        "delivery": {
            "type": "string",
            "enum": ["queued", "retrying", "sent", "failed", "withdrawn"],
        },
        "delivery_error": {"type": ["string", "null"]},
        "delivery_next_attempt_at": {
            **NULL_TIME,
            "description": "while delivery is retrying: when the mailer tries again",
        },
        "sub_client": {"type": ["boolean", "null"]},
        "invited_by": {"type": ["string", "null"]},
        "accepted_at": NULL_TIME,
        "revoked_at": NULL_TIME,
        "created_at": TIME,
        "send_count": {"type": "integer"},
        "expires_in_days": {
            "type": ["integer", "null"],
            "enum": [7, 14, 21, 30, None],
            "description": "the current link's length (chosen, or the setting's when sent);"
            " null for invitations sent before it was recorded",
        },
        "personal_message": {"type": ["string", "null"], "maxLength": 1000},
        "send_reason": {
            "type": ["string", "null"],
            "description": "why the current link went: invited, staff, api,"
            " invitation_requested, requested_by_invitee, reminder",
        },
        "reminded_at": NULL_TIME,
        "group_id": {
            **UUID,
            "type": ["string", "null"],
            "description": "set when sent with others in one email (several portals, one"
            " invitation)",
        },
        "locale": LOCALE,
    },
}
COUNTS = {
    "type": "object",
    "properties": {
        name: {"type": "integer"} for name in ("all", "pending", "accepted", "expired", "revoked")
    },
}
LINKED = {
    "type": "object",
    "properties": {
        "invitation_id": UUID,
        "portal_id": UUID,
        "portal_title": {"type": ["string", "null"]},
        "portal_slug": {"type": ["string", "null"]},
        "sub_client": {"type": ["boolean", "null"]},
        "idempotency_key": {"type": ["string", "null"]},
    },
}
RESERVED = {
    "type": "object",
    "properties": {
        "claim": UUID,
        "invitation": INVITATION,
        "invitations": {
            "type": "array",
            "items": LINKED,
            "description": "every invitation the claim holds (a group's link: several)",
        },
    },
}
GROUP = {
    "type": "object",
    "properties": {
        "group_id": UUID,
        "invitations": {"type": "array", "items": INVITATION, "description": "one per portal"},
    },
}
ACCEPTED = {
    **INVITATION,
    "properties": {
        **INVITATION["properties"],  # type: ignore[dict-item]
        "invitations": {"type": "array", "items": LINKED, "description": "all accepted"},
    },
}
OUTCOME = {
    "type": "object",
    "properties": {
        "invitation": INVITATION,
        "outcome": {"type": "string", "enum": ["created", "resent"]},
    },
}
STAFF_INVITATION = {
    **INVITATION,
    "properties": {
        **INVITATION["properties"],  # type: ignore[dict-item]
        "invited_by_id": {
            **UUID,
            "type": ["string", "null"],
            "description": "the user id of the Administrator who sent it (null: no person,"
            " or sent before senders were recorded); should they be disabled, erased or lose"
            " the Administrator role, it is revoked",
        },
    },
}
STAFF_OUTCOME = {
    "type": "object",
    "properties": {
        "invitation": STAFF_INVITATION,
        "outcome": {"type": "string", "enum": ["created", "resent"]},
    },
}
PAGE = page_of(INVITATION)
VALIDATED = {
    "type": "object",
    "properties": {
        "invitation_id": UUID,
        "email": {"type": "string"},
        "portal_id": {**UUID, "type": ["string", "null"]},
        "portal_title": {"type": ["string", "null"]},
        "portal_slug": {"type": ["string", "null"]},
        "role": ROLE,
        "expires_at": TIME,
        "account_exists": {"type": "boolean"},
        "account_disabled": {
            "type": "boolean",
            "description": "the account exists and is disabled: it can't log in to accept",
        },
        "sub_client": {"type": ["boolean", "null"]},
        "group_id": {**UUID, "type": ["string", "null"]},
        "locale": LOCALE,
        "invitations": {
            "type": "array",
            "items": LINKED,
            "description": "each invitation accepting the link takes now (a group's: those"
            " still pending whose portal is Active)",
        },
    },
}
ACCESS = api.AccessSettings.model_json_schema()
ID = {"name": "id", "in": "path", "required": True, "schema": UUID}
TOKEN_ERRORS = [
    "404 invitation_invalid",
    "409 invitation_used",
    "410 invitation_expired (error.expired_at)",
    "410 invitation_revoked",
    "410 invitation_replaced (a newer link was sent)",
    "409 portal_not_active (a group's link: none of its portals is Active)",
]
BATCH = {
    "type": "object",
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["row", "email", "status"],
                "properties": {
                    "row": {"type": "integer", "description": "from 1, in input order"},
                    "email": {"type": "string"},
                    "status": {"type": "string", "enum": ["created", "resent", "rejected"]},
                    "invitation_id": UUID,
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        }
    },
}
REQUESTED = {"type": "object", "properties": {"status": {"const": "requested"}}}

OPERATIONS: list[Operation] = [
    ("post", "/invitations", "Invite a person to a portal (or resend their pending one)",
     api.InviteBody, None, [], 201, OUTCOME,
     ["200 outcome=resent", "422 invalid_email", "404 portal_not_found",
      "409 portal_not_active", "409 already_has_access", "422 invalid_expires_in_days",
      "422 personal_message_too_long", "422 invalid_locale",
      "429 send_rate_limited", "503 identity_unavailable"]),
    ("post", "/invitations/group",
     "Invite a person to several portals (1 to 20) with one email and one link",
     api.GroupBody, None, [], 201, GROUP,
     ["422 invalid_email", "422 no_portals", "422 too_many_portals", "422 duplicate_portal",
      "404 portal_not_found (error.portal_id)", "409 portal_not_active (error.portal_ids)",
      "409 already_has_access (error.portal_ids)", "409 invitation_pending (error.portal_ids)",
      "409 idempotency_key_reused", "422 invalid_expires_in_days",
      "422 personal_message_too_long", "422 name_too_long", "503 identity_unavailable"]),
    ("post", "/invitations/batch",
     "Invite many people to one portal (up to 10,000 rows): a verdict per row, in order",
     api.BatchBody, None, [], 200, BATCH,
     ["404 portal_not_found", "409 portal_not_active", "413 body_too_large"]),
    ("get", "/invitations", "List invitations, newest first", None, api.ListQuery, [], 200,
     PAGE, ["422 invalid_cursor", "422 invalid_email"]),
    ("get", "/invitations/counts",
     "How many invitations per status (effective), under the list's portal/email filters",
     None, api.CountsQuery, [], 200, COUNTS, ["422 invalid_email"]),
    ("get", "/invitations/validate", "Check a link without using it", None, api.TokenQuery,
     [], 200, VALIDATED, [*TOKEN_ERRORS, "503 identity_unavailable"]),
    ("post", "/invitations/reserve",
     "Spend a link for one request (pending to accepting, exactly once), before any account"
     " or access; a staff invitation's sender is asked at identity (invitation_revoked:"
     " they may no longer send it)", api.ReserveBody, None, [], 200, RESERVED,
     [*TOKEN_ERRORS, "503 identity_unavailable"]),
    ("post", "/invitations/accept", "Finish the acceptance a claim holds: accepted, announced",
     api.AcceptBody, None, [], 200, ACCEPTED, ["404 invitation_invalid", "409 invitation_used"]),
    ("post", "/invitations/release",
     "A failed driver lets go: pending again (reopen) or open to the same link at once",
     api.ReleaseBody, None, [], 204, None, ["404 invitation_invalid"]),
    ("post", "/invitations/new-link",
     "Email me a new link: written down and answered alike for every token (served after)",
     api.NewLinkBody, None, [], 202, REQUESTED, []),
    ("get", "/invitations/{id}", "Get an invitation", None, None, [ID], 200, INVITATION,
     ["404 invitation_not_found"]),
    ("post", "/invitations/{id}/resend", "New link and expiry; the old link dies",
     api.ResendBody, None, [ID], 200, INVITATION,
     ["404 invitation_not_found", "409 invitation_accepted", "409 invitation_revoked",
      "409 invitation_pending", "409 portal_not_active",
      "429 send_rate_limited (Retry-After, error.retry_at)"]),
    ("post", "/invitations/{id}/revoke", "Invalidate the link", None, None, [ID], 200,
     INVITATION, ["404 invitation_not_found", "409 invitation_accepted"]),
    ("post", "/staff-invitations",
     "Invite a person to the team as Administrator or Staff (or resend their pending one)",
     api.StaffInviteBody, None, [], 201, STAFF_OUTCOME,
     ["200 outcome=resent", "422 invalid_email", "422 invalid_role",
      "409 already_on_team", "409 account_disabled", "429 send_rate_limited",
      "503 identity_unavailable"]),
    ("get", "/staff-invitations", "Pending and expired staff invitations, newest first",
     None, None, [], 200, {"type": "object", "properties": {
         "items": {"type": "array", "items": STAFF_INVITATION}}}, []),
    ("post", "/staff-invitations/{id}/resend", "New link and expiry; the old link dies",
     None, None, [ID], 200, STAFF_INVITATION,
     ["404 invitation_not_found", "409 invitation_accepted", "409 invitation_revoked",
      "409 invitation_pending", "429 send_rate_limited (Retry-After, error.retry_at)"]),
    ("post", "/staff-invitations/{id}/revoke", "Invalidate the link", None, None, [ID], 200,
     STAFF_INVITATION, ["404 invitation_not_found", "409 invitation_accepted"]),
    ("get", "/settings/access", "Invitation Link Expiry and Invitation Reminder", None, None,
     [], 200, ACCESS, []),
    ("put", "/settings/access",
     "Set Invitation Link Expiry (7, 14, 21 or 30 days) and/or Invitation Reminder (0 = Off,"
     " 1 or 3 days before expiry)",
     api.AccessSettings, None, [], 200, ACCESS,
     ["422 invalid_expiry_days", "422 invalid_reminder_days"]),
]  # fmt: skip


openapi = openapi_route("ClientPress invitations (internal)", OPERATIONS)
