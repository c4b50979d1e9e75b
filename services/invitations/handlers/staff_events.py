"""What a staff invitation (a role, no portal) announces and mails, in place of a client
invitation's portal events: invitation.staff.* and the staff_invitation email. The
shared send, accept, revoke and sweep paths ask here when the row has a ``staff_role``."""

from __future__ import annotations

import uuid
from datetime import datetime

from libs.common.actor import Actor
from libs.common.db import Conn
from libs.common.events import (
    MailRequested,
    StaffInvitationAccepted,
    StaffInvitationClosed,
    StaffInvitationSent,
)

from .. import domain
from .base import Deps, Row, emit


def is_staff(row: Row) -> bool:
    return row["staff_role"] is not None


def mail_job(
    deps: Deps,
    mail_id: uuid.UUID,
    row: Row,
    token: str,
    expires_at: datetime,
    expires_in_days: int | None,
) -> MailRequested:
    """The only place a staff invitation's token leaves this service: the private mail
    job, sealed for the mailer."""
    context = domain.staff_mail_context(
        public_base=deps.settings.public_base,
        token=token,
        role=row["staff_role"],
        expires_at=expires_at,
        invited_by=row["invited_by"],
        expires_in_days=expires_in_days,
    )
    return MailRequested(
        mail_id=mail_id,
        template="staff_invitation",
        to=row["email"],
        ref_type="invitation",
        ref_id=row["id"],
        context=deps.settings.sealer().seal(context),
        locale=row["locale"],
    )


async def announce_sent(
    conn: Conn,
    deps: Deps,
    event_type: str,
    row: Row,
    token: str,
    mail_id: uuid.UUID,
    expires_at: datetime,
    expires_in_days: int | None,
) -> None:
    """invitation.staff.created / .resent and its mail job, through the outbox."""
    sent = StaffInvitationSent(
        invitation_id=row["id"],
        email=row["email"],
        role=row["staff_role"],
        expires_at=expires_at,
        invited_by=row["invited_by"],
    )
    mail = mail_job(deps, mail_id, row, token, expires_at, expires_in_days)
    await emit(conn, event_type, sent, ("mail.requested", mail))


async def announce_closed(
    conn: Conn, event_type: str, row: Row, *, actor: Actor | None = None
) -> None:
    """invitation.staff.revoked / .expired. ``actor``: whose change it is, when not the
    request's (a sender's right taken away: whoever took it)."""
    closed = StaffInvitationClosed(
        invitation_id=row["id"], email=row["email"], role=row["staff_role"]
    )
    await emit(conn, event_type, closed, actor=actor)


async def announce_accepted(conn: Conn, row: Row, user_id: uuid.UUID) -> None:
    accepted = StaffInvitationAccepted(
        invitation_id=row["id"], email=row["email"], role=row["staff_role"], user_id=user_id
    )
    await emit(conn, "invitation.staff.accepted", accepted)
