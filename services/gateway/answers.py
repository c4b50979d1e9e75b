"""What the services answer the gateway (docs/internal-api.md), as types: the upstream
clients return these, so a view that reads a key the answer doesn't have fails the type
check, not a request. JSON as it arrives: ids and times are strings."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

Role = Literal["administrator", "staff", "client"]


# --- identity ---------------------------------------------------------------------------
class UserAnswer(TypedDict):
    id: str
    email: str
    role: Role
    disabled: bool
    created_at: str
    locale: str | None
    time_zone: str | None


class SessionInfo(TypedDict):
    id: str
    created_at: str
    expires_at: str
    idle_expires_at: str


class CurrentSession(TypedDict):
    user: UserAnswer
    session: SessionInfo


class IssuedSession(CurrentSession):
    token: str
    expires_at: str


class EnsuredUser(TypedDict):
    user: UserAnswer
    created: bool


class UserPage(TypedDict):
    items: list[UserAnswer]
    next_cursor: str | None


class LoginSettings(TypedDict):
    login_redirect: bool


class ApiKeyAnswer(TypedDict):
    id: str
    name: str
    scopes: list[str]
    prefix: str
    created_by: str | None
    created_at: str
    last_used_at: str | None


class CreatedApiKey(ApiKeyAnswer):
    key: str


class ResetLink(TypedDict):
    email: str


# --- portals ----------------------------------------------------------------------------
class PortalAnswer(TypedDict):
    id: str
    title: str
    slug: str
    # Left out of lists; null while the portal isn't Active (to a client).
    content: NotRequired[str | None]
    content_html: NotRequired[str | None]
    status: Literal["active", "pending", "archived"]
    client_id: str | None
    sub_client_ids: list[str]
    revision: int
    created_at: str
    updated_at: str


class PortalPage(TypedDict):
    items: list[PortalAnswer]
    next_cursor: str | None


# --- invitations ------------------------------------------------------------------------
InvitationStatus = Literal["pending", "accepted", "expired", "revoked"]


class InvitationAnswer(TypedDict):
    id: str
    email: str
    portal_id: str | None  # null: a staff invitation, which has a role instead
    portal_title: str | None
    portal_slug: str | None
    role: Literal["administrator", "staff"] | None
    status: InvitationStatus
    sent_at: str
    expires_at: str
    delivery: Literal["queued", "retrying", "sent", "failed"]
    delivery_error: str | None
    delivery_next_attempt_at: str | None
    sub_client: bool | None
    invited_by: str | None
    accepted_at: str | None
    revoked_at: str | None
    created_at: str
    send_count: int
    expires_in_days: int | None
    personal_message: str | None
    name: str | None
    send_reason: str | None
    reminded_at: str | None
    group_id: str | None
    locale: str | None


class InviteOutcome(TypedDict):
    invitation: InvitationAnswer
    outcome: Literal["created", "resent"]


class InvitationPage(TypedDict):
    items: list[InvitationAnswer]
    next_cursor: str | None


class LinkedInvitation(TypedDict):
    """One invitation a link accepts: what the gateway grants."""

    invitation_id: str
    portal_id: str
    portal_title: str | None
    portal_slug: str | None
    sub_client: bool | None
    idempotency_key: str | None
    locale: str | None


class AcceptedLink(InvitationAnswer):
    invitations: list[LinkedInvitation]


class AccessSettings(TypedDict):
    invitation_expiry_days: int
    invitation_reminder_days: int | None
