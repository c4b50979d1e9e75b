"""What every use case shares: its dependencies, commands and the event writer."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, Self

import asyncpg

from libs.common.actor import Actor
from libs.common.db import Conn, UseCaseDeps
from libs.common.events import Envelope, EventData, InvitationClosed, make_event
from libs.common.logging import get_logger
from libs.common.outbox import append

from ..clients import Directory, PortalInfo
from ..domain import one_line
from ..settings import InvitationsSettings

if TYPE_CHECKING:
    from .sending import FirstWrites

log = get_logger(__name__)

SOURCE = "invitations"
Outcome = Literal["created", "resent", "duplicate"]
Row = asyncpg.Record


@dataclass(frozen=True)
class Deps(UseCaseDeps):
    """What the use cases need: ``db`` (the pool, or a consumer's connection) and
    ``clock`` from UseCaseDeps, the settings, and the directory (the HTTP clients of
    identity and portals). Built once the pool and the directory are open."""

    settings: InvitationsSettings
    directory: Directory
    # First invitations written together on the pool (None: each in its own statement).
    firsts: FirstWrites | None = None

    def within(self, conn: Conn) -> Self:
        """On one connection (a caller's transaction), each statement goes on it."""
        return dataclasses.replace(self, db=conn, firsts=None)


@dataclass(frozen=True, kw_only=True)
class InviteOptions:
    """What a request to invite chooses besides whom and to which portals: the same for
    one portal (InviteCommand) and several (GroupCommand)."""

    invited_by: str | None = None
    sub_client: bool | None = None
    idempotency_key: str | None = None
    # Chosen for this invitation (Link Expiry, Personal Message); None: the setting / none.
    expires_in_days: int | None = None
    personal_message: str | None = None
    # The invitee's display name (Import Clients, the batch API): kept, and in the greeting.
    invitee_name: str | None = None
    # The language of the invitation's emails and pages; None: the agency's Language.
    locale: str | None = None

    def __post_init__(self) -> None:
        # Who invited is the subject of the email's first sentence, whoever sent it (an
        # event from another system too): one line, so it can't add lines of its own.
        object.__setattr__(self, "invited_by", one_line(self.invited_by))

    @classmethod
    def from_fields(cls, source: object, **given: Any) -> Self:
        """The command from a request body or an event that names its fields alike: each
        field ``source`` has, unless ``given`` says it (named otherwise there, or changed)."""
        taken = {
            field.name: getattr(source, field.name)
            for field in fields(cls)
            if field.name not in given and hasattr(source, field.name)
        }
        return cls(**taken, **given)


@dataclass(frozen=True)
class InviteCommand(InviteOptions):
    email: str
    portal_id: uuid.UUID | None = None
    portal_slug: str | None = None
    # When the invitation is already pending and gets a new link instead: who asked
    # (invitation.resent ``reason``): staff, api or invitation_requested.
    resend_reason: str = "staff"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.portal_slug:
            # Slugs are lower case: a CRM's "Acme-Rebrand" names acme-rebrand.
            object.__setattr__(self, "portal_slug", self.portal_slug.lower())


@dataclass(frozen=True)
class GroupCommand(InviteOptions):
    email: str
    portal_ids: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class CheckedInvite:
    """An invitation that passed every rule that needs another service."""

    command: InviteCommand
    email: str
    portal: PortalInfo
    personal_message: str | None = None
    locale: str | None = None
    # The address has an account: the email asks the person to log in (mail_context).
    has_account: bool = False

    # A first email is written alike for one portal and a group's (sending.prepare_first).
    @property
    def portals(self) -> list[PortalInfo]:
        return [self.portal]

    @property
    def invitee_name(self) -> str | None:
        return self.command.invitee_name


@dataclass(frozen=True)
class CheckedGroup:
    """A group that passed every rule that needs another service; its portals in the
    order they were asked for."""

    command: GroupCommand
    email: str
    portals: list[PortalInfo]
    personal_message: str | None
    invitee_name: str | None
    locale: str | None = None
    has_account: bool = False


def about(row: Row) -> dict[str, Any]:
    """What every invitation.* event says of the invitation in ``row``: which one, to whom,
    for which portal, sent by whom, with which others in one email."""
    return {
        "invitation_id": row["id"],
        "portal_id": row["portal_id"],
        "email": row["email"],
        "invited_by": row["invited_by"],
        "group_id": row["group_id"],
    }


def closed_event(row: Row) -> InvitationClosed:
    """invitation.revoked / invitation.expired of the invitation in ``row``."""
    return InvitationClosed(**about(row), idempotency_key=row["idempotency_key"])


def envelope(event_type: str, data: EventData, actor: Actor | None = None) -> Envelope:
    """The event as this service publishes it. ``actor``: by default the request's."""
    return make_event(event_type, data, source=SOURCE, actor=actor)


async def emit(
    conn: Conn,
    event_type: str,
    data: EventData,
    *more: tuple[str, EventData],
    actor: Actor | None = None,
) -> None:
    """One event, or several in the order given, in one outbox statement. ``actor``: who
    made the change when it isn't the request's (an event's consequence: its actor)."""
    await append(conn, envelope(event_type, data, actor), *(envelope(t, d, actor) for t, d in more))
