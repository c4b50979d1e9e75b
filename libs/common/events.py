"""The event envelope and every event's data model (DESIGN.md "Events": the public contract).

Models are frozen and versioned: a breaking change is a new ``(type, version)`` entry,
never an edit of an old one. ``mail.*`` jobs are listed here too, but ``mail.requested``
travels only on the private mail exchange."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .context import current_correlation_id


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

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))


# --- identity -------------------------------------------------------------------------
class UserCreated(EventData):
    user_id: uuid.UUID
    email: str
    role: Literal["administrator", "client"]


class UserDisabled(EventData):
    user_id: uuid.UUID


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
    """portal.access.granted / portal.access.revoked."""

    portal_id: uuid.UUID
    user_id: uuid.UUID
    role: Literal["client", "sub_client"] | None = None


# --- invitations ----------------------------------------------------------------------
class InvitationRequested(EventData):
    """Inbound from other systems (CRM, billing)."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    portal_id: uuid.UUID | None = None
    portal_slug: str | None = Field(default=None, max_length=200)
    # Bounded, but far above an address's 320: a too-long address must reach the
    # consumer and be answered with invitation.rejected invalid_email, not dead-lettered.
    email: str = Field(max_length=65_536)
    idempotency_key: str = Field(min_length=1, max_length=200)
    sub_client: bool | None = None
    invited_by: str | None = Field(default=None, max_length=200)


class InvitationCreated(EventData):
    invitation_id: uuid.UUID
    portal_id: uuid.UUID
    email: str
    expires_at: datetime
    invited_by: str | None = None
    idempotency_key: str | None = None
    sub_client: bool | None = None


class InvitationRejected(EventData):
    reason: str
    message: str
    idempotency_key: str | None = None
    email: str | None = None
    portal_id: uuid.UUID | None = None
    portal_slug: str | None = None


class InvitationResent(EventData):
    invitation_id: uuid.UUID
    portal_id: uuid.UUID
    email: str
    expires_at: datetime


class InvitationClosed(EventData):
    """invitation.revoked / invitation.expired."""

    invitation_id: uuid.UUID
    portal_id: uuid.UUID
    email: str


class InvitationAccepted(EventData):
    invitation_id: uuid.UUID
    portal_id: uuid.UUID
    email: str
    user_id: uuid.UUID
    sub_client: bool | None = None


# --- mail -----------------------------------------------------------------------------
class MailRequested(EventData):
    """A mail job. Private: carries links with one-time tokens, so it travels only on the
    mail exchange that the mailer alone binds."""

    mail_id: uuid.UUID
    template: Literal["invitation", "password_reset"]
    to: str
    ref_type: str
    ref_id: uuid.UUID
    context: dict[str, str]


class MailSent(EventData):
    mail_id: uuid.UUID
    template: str
    ref_type: str
    ref_id: uuid.UUID


class MailFailed(EventData):
    mail_id: uuid.UUID
    template: str
    ref_type: str
    ref_id: uuid.UUID
    reason: str
    attempts: int


EVENTS: dict[tuple[str, int], type[EventData]] = {
    ("identity.user.created", 1): UserCreated,
    ("identity.user.disabled", 1): UserDisabled,
    ("identity.session.revoked", 1): SessionRevoked,
    ("portal.created", 1): PortalChanged,
    ("portal.updated", 1): PortalChanged,
    ("portal.access.granted", 1): PortalAccessChanged,
    ("portal.access.revoked", 1): PortalAccessChanged,
    ("invitation.requested", 1): InvitationRequested,
    ("invitation.created", 1): InvitationCreated,
    ("invitation.rejected", 1): InvitationRejected,
    ("invitation.resent", 1): InvitationResent,
    ("invitation.revoked", 1): InvitationClosed,
    ("invitation.expired", 1): InvitationClosed,
    ("invitation.accepted", 1): InvitationAccepted,
    ("mail.requested", 1): MailRequested,
    ("mail.sent", 1): MailSent,
    ("mail.failed", 1): MailFailed,
}

PRIVATE_TYPES = frozenset({"mail.requested"})


class MalformedEvent(Exception):
    """A message that can never be processed: not JSON, wrong shape, unknown version."""


def make_event(
    event_type: str,
    data: EventData,
    *,
    source: str,
    correlation_id: str | None = None,
    version: int = 1,
) -> Envelope:
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
    )


def parse_envelope(body: bytes) -> Envelope:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"body is not JSON: {exc}") from None
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        raise MalformedEvent(f"bad envelope: {_summarise(exc)}") from None


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
