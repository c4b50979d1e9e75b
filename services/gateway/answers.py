"""What the services answer the gateway (docs/internal-api.md), as types: the upstream
clients return these, so a view that reads a key the answer doesn't have fails the type
check, not a request. JSON as it arrives: ids and times are strings."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from libs.common.broker import WebhookEvent

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


class UserList(TypedDict):
    items: list[UserAnswer]


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


class ApiKeyList(TypedDict):
    items: list[ApiKeyAnswer]


class ResetLink(TypedDict):
    email: str


class ActivityActor(TypedDict):
    """Who made a change: also each row of ``GET /activity/actors``."""

    type: str  # user or key
    id: str  # a user's or key's id; bootstrap for GATEWAY_API_KEY
    name: str


class ActivityObject(TypedDict):
    type: str
    id: str | None
    label: str


class ActivityEntry(TypedDict):
    id: str
    occurred_at: str
    action: str
    actor: ActivityActor
    object: ActivityObject
    portal_id: str | None
    details: dict[str, Any]  # what changed: its keys differ by action


class ActivityPage(TypedDict):
    items: list[ActivityEntry]
    next_cursor: str | None


class ActivityActors(TypedDict):
    items: list[ActivityActor]


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


AccessRole = Literal["client", "sub_client"]


class GrantedAccess(TypedDict):
    portal: PortalAnswer
    role: AccessRole


class UserPortal(PortalAnswer):
    """One of a user's portals (without content), with the user's role on it."""

    role: AccessRole


class UserPortalList(TypedDict):
    items: list[UserPortal]


class UsersPortals(TypedDict):
    user_id: str
    portals: list[UserPortal]


class UsersPortalsList(TypedDict):
    items: list[UsersPortals]


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
    delivery: Literal["queued", "retrying", "sent", "failed", "withdrawn"]
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


class InvitationList(TypedDict):
    items: list[InvitationAnswer]


class InvitationCounts(TypedDict):
    """How many invitations each status tab holds."""

    all: int
    pending: int
    accepted: int
    expired: int
    revoked: int


class InvitationGroup(TypedDict):
    """Several portals, one invitation: one per portal, in the order given."""

    group_id: str
    invitations: list[InvitationAnswer]


class BatchRowAnswer(TypedDict):
    row: int
    email: str
    status: Literal["created", "resent", "rejected"]
    invitation_id: NotRequired[str]  # created or resent
    reason: NotRequired[str]  # rejected: the error code, and its words
    message: NotRequired[str | None]


class BatchAnswer(TypedDict):
    results: list[BatchRowAnswer]


class LinkedInvitation(TypedDict):
    """One invitation a link accepts: what the gateway grants."""

    invitation_id: str
    portal_id: str | None  # null for a staff invitation
    portal_title: str | None
    portal_slug: str | None
    sub_client: bool | None
    idempotency_key: str | None
    locale: str | None


class ValidatedLink(TypedDict):
    """What a link would accept now; the top-level fields are the first invitation's."""

    invitation_id: str
    email: str
    portal_id: str | None
    portal_title: str | None
    portal_slug: str | None
    role: Literal["administrator", "staff"] | None
    expires_at: str
    account_exists: bool
    account_disabled: NotRequired[bool]  # absent from an older invitations service
    sub_client: bool | None
    idempotency_key: str | None
    group_id: str | None
    locale: str | None
    invitations: list[LinkedInvitation]


class ReservedLink(TypedDict):
    claim: str
    invitation: InvitationAnswer
    invitations: list[LinkedInvitation]


class AcceptedLink(InvitationAnswer):
    invitations: list[LinkedInvitation]


class AccessSettings(TypedDict):
    invitation_expiry_days: int
    invitation_reminder_days: int | None


# --- mailer: webhooks -------------------------------------------------------------------
class WebhookAnswer(TypedDict):
    id: str
    url: str
    events: list[WebhookEvent]
    created_at: str


class WebhookWithSecretAnswer(WebhookAnswer):
    """Adding an endpoint or rotating its secret: the only answers with the secret."""

    secret: str


class WebhookList(TypedDict):
    items: list[WebhookAnswer]


class DeliveryAnswer(TypedDict):
    id: str
    endpoint_id: str
    event_id: str
    event_type: WebhookEvent
    status: Literal["queued", "sending", "delivered", "failed"]
    attempts: int
    response_code: int | None
    duration_ms: int | None
    error: str | None
    last_attempt_at: str | None
    next_attempt_at: str | None  # while queued
    delivered_at: str | None
    created_at: str


class DeliveryPage(TypedDict):
    items: list[DeliveryAnswer]
    next_cursor: str | None


class WebhookWithLog(WebhookAnswer):
    deliveries: list[DeliveryAnswer]


class WebhookLogList(TypedDict):
    items: list[WebhookWithLog]


# --- mailer: branding -------------------------------------------------------------------
class BrandingAnswer(TypedDict):
    agency_name: str  # empty strings: not set
    accent_colour: str
    reply_to: str
    footer_text: str
    logo_etag: str | None
    logo_type: str | None
    # The mailer always answers both; the built-in look (upstream.NO_BRANDING) has neither,
    # and pages then use the browser's language and UTC.
    default_locale: NotRequired[str]
    time_zone: NotRequired[str]


class LogoAnswer(TypedDict):
    content_type: str
    etag: str
    content: str  # base64
