"""What /api/v1 answers with, as pydantic models: the OpenAPI document's response schemas
(openapi.py). The gateway passes the owning services' JSON through; these describe it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

Status = Literal["active", "pending", "archived"]
InvitationStatus = Literal["pending", "accepted", "expired", "revoked"]


class Portal(BaseModel):
    id: UUID
    title: str
    slug: str
    content: Annotated[str | None, Field(description="Markdown")] = None
    content_html: Annotated[str | None, Field(description="sanitised HTML")] = None
    status: Status
    client_id: UUID | None = None
    sub_client_ids: list[UUID] = []
    revision: int
    created_at: datetime
    updated_at: datetime


class Invitation(BaseModel):
    id: UUID
    email: str
    portal_id: UUID
    portal_title: str | None = None
    portal_slug: str | None = None
    status: InvitationStatus
    sent_at: datetime
    expires_at: datetime
    delivery: Literal["queued", "retrying", "sent", "failed", "withdrawn"]
    delivery_error: str | None = None
    delivery_next_attempt_at: Annotated[
        datetime | None,
        Field(description="while delivery is retrying: when the mailer tries again"),
    ] = None
    sub_client: bool | None = None
    invited_by: str | None = None
    accepted_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime
    send_count: int
    expires_in_days: Annotated[
        int | None,
        Field(description="the current link's length in days (7, 14, 21 or 30)"),
    ] = None
    personal_message: Annotated[
        str | None, Field(description="the Personal Message shown in the email")
    ] = None
    send_reason: Annotated[
        Literal[
            "invited", "staff", "api", "invitation_requested", "requested_by_invitee", "reminder"
        ]
        | None,
        Field(
            description="why the current link was sent: the first invitation, a Resend"
            " (staff, api, invitation_requested), Email me a new link (requested_by_invitee),"
            " the reminder; null for a resend made before this was recorded"
        ),
    ] = None
    reminded_at: Annotated[
        datetime | None, Field(description="when the one reminder went, if it did")
    ] = None
    name: Annotated[
        str | None,
        Field(description="the invitee's name (Import Clients, the batch API): in the greeting"),
    ] = None
    locale: Annotated[
        str | None,
        Field(
            description="the language of its emails and pages (en, de, fr, es); null: the agency's"
        ),
    ] = None
    group_id: Annotated[
        UUID | None,
        Field(
            description="set when the invitation was sent with others in one email (POST"
            " /invitations: several portals, one invitation); the same for each of them"
        ),
    ] = None


class InviteResult(BaseModel):
    invitation: Invitation
    outcome: Literal["created", "resent"]


class StaffInvitation(BaseModel):
    """An invitation to join the team (Users → Invite Staff): a role, no portal."""

    id: UUID
    email: str
    role: Literal["administrator", "staff"]
    status: InvitationStatus
    sent_at: datetime
    expires_at: datetime
    delivery: Literal["queued", "retrying", "sent", "failed", "withdrawn"]
    invited_by: str | None = None
    accepted_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime
    send_count: int
    expires_in_days: int | None = None


class StaffInviteResult(BaseModel):
    invitation: StaffInvitation
    outcome: Literal["created", "resent"]


class StaffInvitationList(BaseModel):
    items: Annotated[
        list[StaffInvitation], Field(description="pending and expired ones, newest first")
    ]


class GroupInviteResult(BaseModel):
    group_id: Annotated[UUID, Field(description="the same in each invitation's group_id")]
    invitations: Annotated[
        list[Invitation],
        Field(
            description="one per portal, in the order given; each with its own id, status,"
            " Resend and Revoke, and one link for all of them"
        ),
    ]


class BatchRowResult(BaseModel):
    row: Annotated[int, Field(description="the row's position in the input, from 1")]
    email: str
    status: Literal["created", "resent", "rejected"]
    invitation_id: UUID | None = None
    reason: Annotated[
        str | None,
        Field(
            description="why a row was rejected: invalid_email, duplicate, already_has_access,"
            " idempotency_key_reused, personal_message_too_long, name_too_long,"
            " integration_rate_limited (past the key's cap on invitations an hour),"
            " invalid_character, …"
        ),
    ] = None
    message: Annotated[str | None, Field(description="the reason in words")] = None


class BatchResult(BaseModel):
    results: Annotated[list[BatchRowResult], Field(description="one per input row, in order")]
    unread_columns: Annotated[
        list[str] | None,
        Field(
            description="a CSV body's columns that were not read (only email, name,"
            " personal_message and sub_client are), as the file names them; absent when"
            " there are none"
        ),
    ] = None


class User(BaseModel):
    id: UUID
    email: str
    role: Literal["administrator", "staff", "client"]
    disabled: bool
    created_at: datetime
    locale: Annotated[
        str | None,
        Field(description="the account's Language (en, de, fr, es); null: the browser's"),
    ] = None
    time_zone: Annotated[
        str | None, Field(description="the account's Time Zone (IANA); null: the agency's")
    ] = None


class AccessSettingsView(BaseModel):
    invitation_expiry_days: Literal[7, 14, 21, 30]
    invitation_reminder_days: Annotated[
        Literal[0, 1, 3], Field(description="Invitation Reminder: days before expiry; 0 = Off")
    ] = 0
    login_redirect: bool


class PortalPage(BaseModel):
    items: list[Portal]
    next_cursor: str | None


class InvitationPage(BaseModel):
    items: list[Invitation]
    next_cursor: str | None


class UserPage(BaseModel):
    items: list[User]
    next_cursor: str | None


Scope = Literal[
    "invitations:write", "invitations:read", "portals:read", "portals:write", "users:read"
]


class ApiKey(BaseModel):
    id: UUID
    name: str
    scopes: list[Scope]
    prefix: Annotated[str, Field(description="the key's first characters, to tell keys apart")]
    created_at: datetime
    last_used_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    key: Annotated[str, Field(description="the key itself: in this answer only, never again")]


class ApiKeyList(BaseModel):
    items: list[ApiKey]


ActivityAction = Literal[
    "invitation.sent",
    "invitation.resent",
    "invitation.revoked",
    "portal.created",
    "portal.updated",
    "portal.access_granted",
    "portal.access_removed",
    "settings.changed",
    "user.invited",
    "user.invitation_resent",
    "user.invitation_revoked",
    "user.role_changed",
    "user.disabled",
    "user.enabled",
    "user.erased",
    "key.created",
    "key.revoked",
]


class ActivityActor(BaseModel):
    type: Annotated[
        Literal["user", "key"], Field(description="a staff member (user) or an integration key")
    ]
    id: Annotated[str, Field(description="the user's or key's id; bootstrap for GATEWAY_API_KEY")]
    name: Annotated[str, Field(description="the user's email, or the key's name")]


class ActivityObject(BaseModel):
    type: Annotated[
        Literal["invitation", "staff_invitation", "portal", "user", "key", "settings"],
        Field(description="staff_invitation: an invitation to join the team (user.invited, …)"),
    ]
    id: str | None = None
    label: Annotated[
        str,
        Field(
            description="an invitation's, a staff invitation's or a user's email, a portal's"
            " title, a key's name"
        ),
    ]


class ActivityEntry(BaseModel):
    id: Annotated[UUID, Field(description="the id of the event that recorded it")]
    occurred_at: datetime
    action: ActivityAction
    actor: ActivityActor
    object: ActivityObject
    portal_id: UUID | None = None
    details: Annotated[
        dict[str, Any],
        Field(
            description="what changed: a role and the previous role, a portal's status, a"
            " key's scopes, settings' changes and previous values, an invitation's inviter"
        ),
    ] = {}


class ActivityPage(BaseModel):
    items: Annotated[list[ActivityEntry], Field(description="newest first")]
    next_cursor: str | None
