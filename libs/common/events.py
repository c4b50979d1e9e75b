"""The event envelope and every event's data model (docs/design.md "Events": the public contract).

Models are frozen and versioned: a breaking change is a new ``(type, version)`` entry,
never an edit of an old one. ``mail.*`` jobs are listed here too, but ``mail.requested``
travels only on the private mail exchange."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_serializer,
)

from .actor import Actor, current_actor
from .context import current_correlation_id
from .nul import NUL_PROBLEM, json_nul_path


class EventData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: uuid.UUID
    type: str = Field(min_length=1, max_length=100)
    version: int = Field(ge=1)
    occurred_at: datetime
    source: str = Field(max_length=100)
    correlation_id: str = Field(min_length=1, max_length=100)
    data: dict[str, Any]
    actor: Actor | None = Field(
        default=None,
        description=(
            "Who made the change: a staff member (user) or an integration key (key), for"
            " changes asked through the gateway. Absent for the system's own work (expiry,"
            " reminders, events from other systems) and for an invitee's own requests."
        ),
    )

    def to_json(self) -> bytes:
        """Written by pydantic-core in one pass (it runs twice a row of a batch), byte for
        byte what orjson makes of ``model_dump(mode="json")``."""
        exclude = {"actor"} if self.actor is None else None  # reads as it always did
        return self.__pydantic_serializer__.to_json(self, exclude=exclude)


# --- identity -------------------------------------------------------------------------
# An event as a consumer's handler gets it: its envelope and its parsed data.
Event = tuple[Envelope, EventData]

Role = Literal["administrator", "staff", "client"]
# What a role may do, least to most: a role is raised when its rank goes up (identity ends
# the account's sessions), and accepting a staff invitation never lowers one.
ROLE_RANK = {"client": 0, "staff": 1, "administrator": 2}


class UserCreated(EventData):
    user_id: uuid.UUID
    email: str
    role: Role


class UserDisabled(EventData):
    user_id: uuid.UUID


class UserEnabled(EventData):
    user_id: uuid.UUID


class UserErased(EventData):
    """An administrator erased the account (the right to erasure): identity deleted it and
    its sessions. Each service that keeps something of the person removes or anonymises it
    in its own schema. Carries the id alone: the event must say nothing of the person."""

    user_id: uuid.UUID


class UserPreferencesChanged(EventData):
    """A person saved their own Language and Time Zone (None: not chosen, the browser's
    language and the agency's zone decide). Gateways forget their cached copy of the user,
    so every replica shows the next page in the new language."""

    user_id: uuid.UUID
    locale: str | None = None
    time_zone: str | None = None


class UserRoleChanged(EventData):
    user_id: uuid.UUID
    role: Role
    previous_role: Role


class ApiKeyChanged(EventData):
    """identity.key.created / identity.key.revoked: never the key itself."""

    key_id: uuid.UUID
    name: str
    scopes: list[str]


class SettingsChanged(EventData):
    """identity.settings.changed (Login Redirect) / invitation.settings.changed (Invitation
    Link Expiry, Invitation Reminder): the settings a save changed, old and new values."""

    changes: dict[str, int | bool | str | None]
    previous: dict[str, int | bool | str | None] = {}


class SessionRevoked(EventData):
    """One session (session_id) or, without it, every session of the user."""

    user_id: uuid.UUID
    reason: str = "logout"
    session_id: uuid.UUID | None = None


# --- portals --------------------------------------------------------------------------
PortalStatus = Literal["active", "pending", "archived"]


class PortalChanged(EventData):
    """portal.created / portal.updated: the portal's current public state."""

    portal_id: uuid.UUID
    slug: str
    title: str
    status: PortalStatus
    revision: int


class PortalAccessChanged(EventData):
    """portal.access.granted / portal.access.revoked. A grant that comes from accepting an
    invitation made under an idempotency key carries that key."""

    portal_id: uuid.UUID
    user_id: uuid.UUID
    role: Literal["client", "sub_client"] | None = None
    idempotency_key: str | None = None


# --- invitations ----------------------------------------------------------------------
# What invitation.requested reads of its longest text fields (the checks answer far less).
TEXT_BOUND = 65_536


class InvitationRequested(EventData):
    """Inbound from other systems (CRM, billing)."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    portal_id: uuid.UUID | None = None
    portal_slug: str | None = Field(default=None, max_length=200)
    # Bounded, but far above an address's 320: a too-long address, or none (a CRM's
    # contact without one, null or left out), must reach the consumer and be answered with
    # invitation.rejected invalid_email, not dead-lettered.
    email: str | None = Field(
        default=None,
        max_length=TEXT_BOUND,
        description="The person to invite: one plain address (required; without one the"
        " request is answered with invitation.rejected, reason invalid_email).",
    )
    idempotency_key: str = Field(min_length=1, max_length=200)
    sub_client: bool | None = None
    invited_by: str | None = Field(default=None, max_length=200)
    # Checked by the invitations service, which answers invitation.rejected
    # (invalid_expires_in_days, personal_message_too_long, invalid_character) rather than
    # dead-lettering.
    expires_in_days: int | None = Field(
        default=None,
        description="Link Expiry for this invitation: 7, 14, 21 or 30 days (default: the"
        " Invitation Link Expiry setting). A Resend keeps it.",
    )
    personal_message: str | None = Field(
        default=None,
        max_length=TEXT_BOUND,
        description="Plain text (at most 1,000 characters) shown in the email; kept for Resends.",
    )
    # Bounded far above the 20 allowed: more is answered with invitation.rejected
    # (too_many_portals), not dead-lettered.
    portal_ids: list[uuid.UUID] | None = Field(
        default=None,
        max_length=1000,
        description="Several portals, one invitation: invite the person to each of these"
        " portals (1 to 20) with one email and one link, instead of portal_id / portal_slug."
        " Announced as one invitation.created per portal, each with the same group_id.",
    )
    locale: str | None = Field(
        default=None,
        max_length=1000,
        description="The language of the invitation's emails and pages: en, de, fr or es"
        " (default: the agency's Language, Settings → Branding). Checked by the invitations"
        " service, which answers invitation.rejected (invalid_locale).",
    )

    # The docs promise an answer for a Link Expiry that is not 7, 14, 21 or 30 and for a
    # Personal Message over 1,000 characters; these keep that promise for values the
    # types above refused, which were dead-lettered unanswered (the CRM waited for ever).
    @field_validator("expires_in_days", mode="before")
    @classmethod
    def _any_expiry_is_answered(cls, value: Any) -> Any:
        """Anything but a whole number of days (14.5, "two weeks", true, 1e30) is read as
        -1, which no Link Expiry is: answered invalid_expires_in_days."""
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) <= 1000:
            return int(value)
        if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 4:
            return int(value)
        return -1

    @field_validator("email", "personal_message", mode="before")
    @classmethod
    def _any_length_is_answered(cls, value: Any) -> Any:
        """Text past its bound is cut to it: still too long for an address or a message, so
        answered invalid_email or personal_message_too_long (the body's 1 MiB bounds it)."""
        if isinstance(value, str) and len(value) > TEXT_BOUND:
            return value[:TEXT_BOUND]
        return value


# Fields that several invitation.* events carry, described once.
InvitedBy = Annotated[
    str | None, Field(description="Who sent the invitation: a staff member, a key's name.")
]
GroupId = Annotated[
    uuid.UUID | None,
    Field(
        description="Set when the invitation was sent with others in one email (several"
        " portals, one invitation): the same for each of them."
    ),
]
InvitationLocale = Annotated[
    str | None,
    Field(
        description="The language of the invitation's emails and pages: en, de, fr or es;"
        " absent or null: the agency's Language (Settings → Branding)."
    ),
]


class InvitationCreated(EventData):
    invitation_id: uuid.UUID
    portal_id: uuid.UUID
    email: str
    expires_at: datetime
    invited_by: str | None = None
    idempotency_key: str | None = None
    sub_client: bool | None = None
    expires_in_days: int | None = Field(
        default=None,
        description="The link's length in days: chosen for this invitation, or the setting's.",
    )
    group_id: GroupId = None
    locale: InvitationLocale = None


class InvitationRejected(EventData):
    reason: str
    message: str
    idempotency_key: str | None = None
    email: str | None = None
    portal_id: uuid.UUID | None = None
    portal_slug: str | None = None
    # reason send_rate_limited: when the next email to this invitation or address can go.
    retry_at: datetime | None = None
    # A request for several portals (portal_ids): the portals it named.
    portal_ids: list[uuid.UUID] | None = None


# Why a new link was sent (invitation.resent ``reason``; the Invitations screen shows it).
RESEND_REASONS = ("staff", "api", "invitation_requested", "requested_by_invitee")


# Every event of an invitation made under an idempotency key (an API Idempotency-Key, or
# invitation.requested's) carries that key, so an integration can tie the whole lifecycle
# to its own request.
class InvitationResent(EventData):
    invitation_id: uuid.UUID
    portal_id: uuid.UUID
    email: str
    expires_at: datetime
    expires_in_days: int | None = Field(
        default=None, description="The new link's length in days (a chosen one is kept)."
    )
    idempotency_key: str | None = None
    reason: str | None = Field(
        default=None,
        description=(
            "Who asked for the new link: staff (Resend on the Invitations screen, or Send"
            " Invitation again in the portal editor), api (the JSON API), invitation_requested"
            " (an invitation.requested event found this invitation pending),"
            " requested_by_invitee (Email me a new link, on the page of an expired or"
            " replaced link). Absent in events published before it existed."
        ),
    )
    invited_by: InvitedBy = None
    group_id: GroupId = None
    locale: InvitationLocale = None


class InvitationReminded(EventData):
    """The one reminder of a pending invitation went out with a fresh link (the earlier
    link is replaced); ``expires_at`` is unchanged."""

    invitation_id: uuid.UUID
    portal_id: uuid.UUID
    email: str
    expires_at: datetime
    invited_by: InvitedBy = None
    group_id: GroupId = None


class InvitationClosed(EventData):
    """invitation.revoked / invitation.expired."""

    invitation_id: uuid.UUID
    portal_id: uuid.UUID
    email: str
    idempotency_key: str | None = None
    invited_by: InvitedBy = None
    group_id: GroupId = None


class InvitationAccepted(EventData):
    invitation_id: uuid.UUID
    portal_id: uuid.UUID
    email: str
    user_id: uuid.UUID
    sub_client: bool | None = None
    idempotency_key: str | None = None
    invited_by: InvitedBy = None
    group_id: GroupId = None


# --- staff invitations (Users → Invite Staff) -------------------------------------------
# A staff invitation has a role and no portal, so it is announced under its own types,
# invitation.staff.*: a consumer of invitation.accepted (portals, which grants from it)
# keeps its portal_id, and an integration bound to invitation.* (one word) never sees
# the team's invitations.
StaffRole = Literal["administrator", "staff"]


class StaffInvitationSent(EventData):
    """invitation.staff.created / invitation.staff.resent: a link went out."""

    invitation_id: uuid.UUID
    email: str
    role: StaffRole
    expires_at: datetime
    invited_by: str | None = None


class StaffInvitationClosed(EventData):
    """invitation.staff.revoked / invitation.staff.expired."""

    invitation_id: uuid.UUID
    email: str
    role: StaffRole


class StaffInvitationAccepted(EventData):
    """The person has an account with at least ``role`` (an account that already had a
    higher role keeps it)."""

    invitation_id: uuid.UUID
    email: str
    role: StaffRole
    user_id: uuid.UUID


# --- mail -----------------------------------------------------------------------------
class MailRequested(EventData):
    """A mail job. Private: carries links with one-time tokens, so it travels only on the
    mail exchange that the mailer alone binds."""

    mail_id: uuid.UUID
    template: Literal["invitation", "invitation_reminder", "staff_invitation", "password_reset"]
    to: str
    ref_type: str
    ref_id: uuid.UUID
    context: dict[str, str]
    locale: str | None = Field(
        default=None,
        description="The email's language (en, de, fr, es); absent or null: the branding's"
        " Language.",
    )
    correlation_id: str | None = Field(
        default=None,
        max_length=100,
        description="In a version 2 message, the correlation id of the request that asked"
        " for this job (absent: the message's).",
    )
    trace_context: str | None = Field(
        default=None,
        description="In a version 2 message, the trace this job's send continues (W3C"
        " trace context, opaque; absent: the message's).",
    )

    @model_serializer(mode="wrap")
    def _without_absent_origin(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A job without its own correlation id or trace is written as it always was."""
        data: dict[str, Any] = handler(self)
        for name in ("correlation_id", "trace_context"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class MailJobs(EventData):
    """``mail.requested`` version 2: several mail jobs in one message (the first
    invitations of a batch, written together, or the single jobs an outbox relay found
    together), so the broker carries, and the mailer records, one message for many
    emails. Each job is a version 1 job, with its own correlation id and trace where they
    differ from the message's; the mailer takes both versions."""

    jobs: list[MailRequested] = Field(min_length=1, max_length=1000)


class MailForget(EventData):
    """A person was erased (identity.user.erased): the mailer forgets its records of email
    to their addresses and the webhook deliveries that name them. Private, like a mail
    job, and the addresses sealed under MAIL_JOB_KEY (a JSON list in a Fernet token), so
    no outbox row, broker store or dead-letter queue it passes keeps them readable."""

    sealed: str = Field(min_length=1, max_length=20_000)


class MailWithdraw(EventData):
    """Invitations closed or replaced the invitations these emails were for (Revoke,
    Resend, a reminder's new link, accept, expiry, erasure): the mailer sends none of them
    that is still waiting (queued, or waiting for a retry), and none that arrives later.
    Private, like a mail job; mail ids only, never an address or a link."""

    mail_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


class MailSent(EventData):
    mail_id: uuid.UUID
    template: str
    ref_type: str
    ref_id: uuid.UUID


class MailRetrying(EventData):
    """A send failed for now (a 4xx answer, or no answer at all) and waits for its next
    try. ``reason`` is machine-readable (``smtp_deferred``, ``smtp_unreachable``)."""

    mail_id: uuid.UUID
    template: str
    ref_type: str
    ref_id: uuid.UUID
    attempt: int
    next_attempt_at: datetime
    reason: str
    smtp_code: int | None = None


class MailFailed(EventData):
    mail_id: uuid.UUID
    template: str
    ref_type: str
    ref_id: uuid.UUID
    reason: str
    attempts: int


# --- settings (owned by the mailer, which keeps the branding) --------------------------
BrandingField = Literal[
    "agency_name", "logo", "accent_colour", "reply_to", "footer_text", "default_locale", "time_zone"
]


# What a reader takes in ``changed``: any name. A release that adds a Branding field names
# it here within version 1 (default_locale and time_zone came so), and a reader of the
# previous release, still running during the rollout, must not refuse the event for it.
# The schema documents the names this release writes.
_BrandingFieldName = Annotated[
    str, WithJsonSchema({"type": "string", "enum": list(get_args(BrandingField))})
]


class BrandingChanged(EventData):
    """Settings → Branding was saved: which fields changed (never their values, so the
    event says nothing an activity log shouldn't keep). Gateways forget their copy. A
    later release may name a field not listed: read it as a change all the same."""

    changed: list[_BrandingFieldName]


EVENTS: dict[tuple[str, int], type[EventData]] = {
    ("identity.user.created", 1): UserCreated,
    ("identity.user.disabled", 1): UserDisabled,
    ("identity.user.enabled", 1): UserEnabled,
    ("identity.user.erased", 1): UserErased,
    ("identity.user.role_changed", 1): UserRoleChanged,
    ("identity.user.preferences_changed", 1): UserPreferencesChanged,
    ("identity.session.revoked", 1): SessionRevoked,
    ("identity.key.created", 1): ApiKeyChanged,
    ("identity.key.revoked", 1): ApiKeyChanged,
    ("identity.settings.changed", 1): SettingsChanged,
    ("portal.created", 1): PortalChanged,
    ("portal.updated", 1): PortalChanged,
    ("portal.access.granted", 1): PortalAccessChanged,
    ("portal.access.revoked", 1): PortalAccessChanged,
    ("invitation.requested", 1): InvitationRequested,
    ("invitation.created", 1): InvitationCreated,
    ("invitation.rejected", 1): InvitationRejected,
    ("invitation.resent", 1): InvitationResent,
    ("invitation.reminded", 1): InvitationReminded,
    ("invitation.revoked", 1): InvitationClosed,
    ("invitation.expired", 1): InvitationClosed,
    ("invitation.accepted", 1): InvitationAccepted,
    ("invitation.staff.created", 1): StaffInvitationSent,
    ("invitation.staff.resent", 1): StaffInvitationSent,
    ("invitation.staff.revoked", 1): StaffInvitationClosed,
    ("invitation.staff.expired", 1): StaffInvitationClosed,
    ("invitation.staff.accepted", 1): StaffInvitationAccepted,
    ("invitation.settings.changed", 1): SettingsChanged,
    ("mail.requested", 1): MailRequested,
    ("mail.requested", 2): MailJobs,
    ("mail.forget", 1): MailForget,
    ("mail.withdraw", 1): MailWithdraw,
    ("mail.sent", 1): MailSent,
    ("mail.retrying", 1): MailRetrying,
    ("mail.failed", 1): MailFailed,
    ("settings.branding.changed", 1): BrandingChanged,
}

# The version of each (type, model): what make_event stamps on an event of that model.
VERSIONS: dict[tuple[str, type[EventData]], int] = {
    (event_type, model): version for (event_type, version), model in EVENTS.items()
}

PRIVATE_TYPES = frozenset({"mail.requested", "mail.forget", "mail.withdraw"})
KNOWN_TYPES = frozenset(event_type for event_type, _ in EVENTS)
OTHER_TYPE = "other"


def type_label(event_type: str) -> str:
    """An event type as a metric label: a type we know, else ``other``. A type comes from
    whoever sent the message; each made-up one would be a series of its own, kept for the
    life of the process."""
    return event_type if event_type in KNOWN_TYPES else OTHER_TYPE


class MalformedEvent(Exception):
    """A message that can never be processed: not JSON, wrong shape, unknown version."""


def make_event(
    event_type: str,
    data: EventData,
    *,
    source: str,
    correlation_id: str | None = None,
    version: int | None = None,
    actor: Actor | None = None,
) -> Envelope:
    """``actor``: who made the change; by default the request's (libs/common/actor.py).
    ``version``: by default the one whose model ``data`` is."""
    if version is None:
        version = VERSIONS.get((event_type, type(data)), 1)
    if EVENTS.get((event_type, version)) is not type(data):
        raise ValueError(f"{event_type} v{version} does not carry {type(data).__name__}")
    return Envelope(
        id=uuid.uuid4(),
        type=event_type,
        version=version,
        occurred_at=datetime.now(UTC),
        source=source,
        correlation_id=correlation_id or current_correlation_id(),
        data=data.model_dump(mode="json"),
        actor=actor or current_actor(),
    )


def parse_envelope(body: bytes) -> Envelope:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"body is not JSON: {exc}") from None
    where = json_nul_path(body, _nul_checked(raw))
    if where is not None:
        raise MalformedEvent(f"bad envelope: {where}: {NUL_PROBLEM}")
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        raise MalformedEvent(f"bad envelope: {_summarise(exc)}") from None


def _nul_checked(raw: Any) -> Any:
    """What of a body the NUL check reads: all of it, but a mail job's data, whose jobs the
    mailer records one by one, refusing alone one that can't be stored (invalid_context):
    its neighbours in a version 2 message, other requests' emails, still go."""
    if isinstance(raw, dict) and raw.get("type") == "mail.requested":
        return {k: v for k, v in raw.items() if k != "data"}
    return raw


def parse_data(envelope: Envelope) -> EventData:
    model = EVENTS.get((envelope.type, envelope.version))
    if model is None:
        raise MalformedEvent(f"unknown event {envelope.type} version {envelope.version}")
    try:
        return model.model_validate(envelope.data)
    except ValidationError as exc:
        raise MalformedEvent(f"bad {envelope.type} data: {_summarise(exc)}") from None


def _summarise(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
    )
