"""Events in: portal changes into the replica, mail outcomes into delivery status, and
``invitation.requested`` from other systems into the invite use case."""

from __future__ import annotations

from libs.common.bus import Binding, Handler
from libs.common.db import Conn
from libs.common.errors import DomainError
from libs.common.events import (
    Envelope,
    EventData,
    InvitationCreated,
    InvitationRejected,
    InvitationRequested,
    MailFailed,
    MailSent,
    PortalChanged,
    make_event,
)
from libs.common.logging import get_logger
from libs.common.outbox import append

from . import repository as repo
from .clients import PortalInfo
from .handlers import SOURCE, Deps, InviteCommand, check_invite, record_invite

log = get_logger(__name__)

BINDINGS = [
    Binding("events", key)
    for key in (
        "invitation.requested",
        "portal.created",
        "portal.updated",
        "mail.sent",
        "mail.failed",
    )
]

# Rejections that are the request's fault; anything else (a service down) is retried.
REJECT_REASONS = frozenset(
    {
        "portal_not_found",
        "portal_not_active",
        "invalid_email",
        "already_has_access",
        "missing_portal",
    }
)


async def on_portal_changed(conn: Conn, envelope: Envelope, data: EventData) -> None:
    assert isinstance(data, PortalChanged)
    await repo.upsert_portal(
        conn, PortalInfo(data.portal_id, data.slug, data.title, data.status, data.revision)
    )


async def on_mail_outcome(conn: Conn, envelope: Envelope, data: EventData) -> None:
    assert isinstance(data, MailSent | MailFailed)
    if data.ref_type != "invitation":
        return
    failed = isinstance(data, MailFailed)
    applied = await repo.set_delivery(
        conn,
        data.ref_id,
        data.mail_id,
        "failed" if failed else "sent",
        data.reason[:500] if isinstance(data, MailFailed) else None,
    )
    if not applied:
        log.info("mail_outcome_stale", invitation_id=str(data.ref_id), mail_id=str(data.mail_id))


async def _answer_repeat(conn: Conn, key: str) -> bool:
    """A retried request (its sender lost our answer, or the broker's confirm) makes
    nothing new but still gets an answer under its own correlation id: the original
    invitation, announced again with the same invitation id."""
    existing = await repo.find_by_key(conn, key)
    if existing is None:
        return False
    log.info("invitation_request_duplicate", idempotency_key=key)
    again = InvitationCreated(
        invitation_id=existing["id"],
        portal_id=existing["portal_id"],
        email=existing["email"],
        expires_at=existing["expires_at"],
        invited_by=existing["invited_by"],
        idempotency_key=key,
        sub_client=existing["sub_client"],
    )
    await append(conn, make_event("invitation.created", again, source=SOURCE))
    return True


def make_on_requested(deps: Deps) -> Handler:
    async def on_requested(conn: Conn, envelope: Envelope, data: EventData) -> None:
        assert isinstance(data, InvitationRequested)
        if await _answer_repeat(conn, data.idempotency_key):
            return
        command = InviteCommand(
            email=data.email,
            portal_id=data.portal_id,
            portal_slug=data.portal_slug,
            invited_by=data.invited_by,
            sub_client=data.sub_client,
            idempotency_key=data.idempotency_key,
        )
        try:
            checked = await check_invite(conn, deps, command)
        except DomainError as exc:
            if exc.code not in REJECT_REASONS:
                raise
            rejected = InvitationRejected(
                reason=exc.code,
                message=exc.message,
                idempotency_key=data.idempotency_key,
                email=data.email[:320],
                portal_id=data.portal_id,
                portal_slug=data.portal_slug,
            )
            await append(conn, make_event("invitation.rejected", rejected, source=SOURCE))
            log.info("invitation_request_rejected", reason=exc.code)
            return
        _, outcome = await record_invite(conn, deps, checked, key_checked=True)
        if outcome == "duplicate":
            # Lost a race with the same key delivered at the same time: answer like a repeat.
            await _answer_repeat(conn, data.idempotency_key)
        log.info("invitation_request_applied", outcome=outcome)

    return on_requested


def handlers(deps: Deps) -> dict[str, Handler]:
    return {
        "portal.created": on_portal_changed,
        "portal.updated": on_portal_changed,
        "mail.sent": on_mail_outcome,
        "mail.failed": on_mail_outcome,
        "invitation.requested": make_on_requested(deps),
    }
