"""Events in: portal changes into the replica, mail outcomes into delivery status, and
``invitation.requested`` from other systems into the invite use case. Each handler gets
``Deps`` on the inbox transaction's connection (libs/common/bus.py ``in_inbox``), so what
it writes commits with the inbox row."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from libs.common.broker import CONSUMES
from libs.common.bus import ServiceHandler, Together
from libs.common.db import Conn, connection
from libs.common.errors import DomainError, InvalidInput, RateLimited
from libs.common.events import (
    Envelope,
    Event,
    EventData,
    InvitationCreated,
    InvitationRejected,
    InvitationRequested,
    MailFailed,
    MailRetrying,
    MailSent,
    PortalChanged,
    make_event,
)
from libs.common.logging import get_logger
from libs.common.outbox import append

from . import domain
from . import repository as repo
from .clients import PortalInfo
from .handlers import (
    SOURCE,
    Deps,
    Group,
    GroupCommand,
    InviteCommand,
    check_group,
    check_invite,
    record_group,
    record_invite,
    replay,
)
from .handlers.base import Row
from .handlers.sending import GROUP_REF, INVITATION_REF

log = get_logger(__name__)

BINDINGS = CONSUMES["invitations"]

# Rejections that are the request's fault; anything else (a service down) is retried.
REJECT_REASONS = frozenset(
    {
        "portal_not_found",
        "portal_not_active",
        "invalid_email",
        "already_has_access",
        "missing_portal",
        "invalid_expires_in_days",
        "personal_message_too_long",
        "invalid_locale",
        "send_rate_limited",
        # Several portals, one invitation (portal_ids).
        "idempotency_key_reused",
        "no_portals",
        "too_many_portals",
        "duplicate_portal",
        "ambiguous_portal",
        "invitation_pending",
    }
)


async def on_portal_changed(deps: Deps, envelope: Envelope, data: EventData) -> None:
    assert isinstance(data, PortalChanged)
    await repo.upsert_portal(
        deps.db, PortalInfo(data.portal_id, data.slug, data.title, data.status, data.revision)
    )


async def on_mail_outcomes(deps: Deps, events: Sequence[Event]) -> None:
    """``mail.sent`` / ``mail.failed``: the invitations' in one statement for the events
    that arrived together; a group's email marks each of its rows it was the latest of."""
    outcomes: list[tuple[MailSent | MailFailed, repo.Outcome]] = []
    async with connection(deps.db) as conn:
        for _, data in events:
            assert isinstance(data, MailSent | MailFailed)
            delivery, error = (
                ("failed", data.reason[:500]) if isinstance(data, MailFailed) else ("sent", None)
            )
            if data.ref_type == INVITATION_REF:
                outcomes.append((data, (data.ref_id, data.mail_id, delivery, error)))
            elif data.ref_type == GROUP_REF:
                applied = await repo.set_group_delivery(
                    conn, data.ref_id, data.mail_id, delivery, error
                )
                if not applied:
                    _stale(data)
        if outcomes:
            marked = await repo.set_deliveries(conn, [outcome for _, outcome in outcomes])
            for (sent, _), ok in zip(outcomes, marked, strict=True):
                if not ok:
                    _stale(sent)


def _stale(data: MailSent | MailFailed) -> None:
    log.info("mail_outcome_stale", invitation_id=str(data.ref_id), mail_id=str(data.mail_id))


async def on_mail_retrying(deps: Deps, envelope: Envelope, data: EventData) -> None:
    assert isinstance(data, MailRetrying)
    if data.ref_type not in (INVITATION_REF, GROUP_REF):
        return
    change = (
        repo.set_delivery_retrying
        if data.ref_type == INVITATION_REF
        else repo.set_group_delivery_retrying
    )
    async with connection(deps.db) as conn:
        applied = await change(
            conn, data.ref_id, data.mail_id, data.next_attempt_at, data.reason[:500]
        )
    if not applied:
        log.info("mail_retrying_stale", invitation_id=str(data.ref_id), mail_id=str(data.mail_id))


def _created_again(
    row: Row, *, idempotency_key: str | None, group_id: uuid.UUID | None = None
) -> InvitationCreated:
    """invitation.created announced again to a retried request, from the invitation's row."""
    return InvitationCreated(
        invitation_id=row["id"],
        portal_id=row["portal_id"],
        email=row["email"],
        expires_at=row["expires_at"],
        invited_by=row["invited_by"],
        idempotency_key=idempotency_key,
        sub_client=row["sub_client"],
        expires_in_days=row["expires_in_days"],
        group_id=group_id,
        locale=row["locale"],
    )


async def _answer_repeat(conn: Conn, key: str) -> bool:
    """A retried request (its sender lost our answer, or the broker's confirm) makes
    nothing new but still gets an answer under its own correlation id: the original
    invitation, announced again with the same invitation id."""
    existing = await repo.find_by_key(conn, key)
    if existing is None:
        return False
    log.info("invitation_request_duplicate", idempotency_key=key)
    again = _created_again(existing, idempotency_key=key)
    await append(conn, make_event("invitation.created", again, source=SOURCE))
    return True


async def _reject(conn: Conn, data: InvitationRequested, exc: DomainError) -> None:
    retry_at = exc.details.get("retry_at") if isinstance(exc, RateLimited) else None
    rejected = InvitationRejected(
        reason=exc.code,
        message=exc.message,
        idempotency_key=data.idempotency_key,
        email=data.email[:320],
        portal_id=data.portal_id,
        portal_slug=data.portal_slug,
        retry_at=retry_at,
        portal_ids=data.portal_ids[: domain.MAX_GROUP_PORTALS] if data.portal_ids else None,
    )
    await append(conn, make_event("invitation.rejected", rejected, source=SOURCE))
    log.info("invitation_request_rejected", reason=exc.code)


async def _announce_group(conn: Conn, group: Group) -> None:
    """A retried request for several portals: its invitations, announced again."""
    log.info("invitation_request_duplicate", group_id=str(group.group_id))
    again = [
        (
            "invitation.created",
            _created_again(row, idempotency_key=row["idempotency_key"], group_id=group.group_id),
        )
        for row in group.invitations
    ]
    await append(conn, *(make_event(t, d, source=SOURCE) for t, d in again))


async def _requested_group(conn: Conn, deps: Deps, data: InvitationRequested) -> None:
    """invitation.requested with portal_ids: one invitation to several portals."""
    command = GroupCommand.from_fields(data, portal_ids=tuple(data.portal_ids or ()))
    try:
        if data.portal_id is not None or data.portal_slug:
            raise InvalidInput(
                "Give portal_ids, or portal_id / portal_slug, not both.",
                code="ambiguous_portal",
            )
        done = await replay(deps, command)
        if done is not None:
            await _announce_group(conn, done)
            return
        checked = await check_group(deps, command)
        # record_group's transaction on the inbox connection is a savepoint: a refusal
        # leaves only the answer.
        group = await record_group(deps, checked)
    except DomainError as exc:
        if exc.code not in REJECT_REASONS:
            raise
        await _reject(conn, data, exc)
        return
    if group.outcome == "duplicate":
        await _announce_group(conn, group)
    log.info("invitation_request_applied", outcome=group.outcome, group_id=str(group.group_id))


async def on_requested(deps: Deps, envelope: Envelope, data: EventData) -> None:
    """The invite use case on the inbox transaction's connection (``deps.db``): the
    invitation, or the refusal's answer, commits with the inbox row."""
    assert isinstance(data, InvitationRequested)
    async with connection(deps.db) as conn:
        if data.portal_ids is not None:
            await _requested_group(conn, deps, data)
            return
        command = InviteCommand.from_fields(data, resend_reason="invitation_requested")
        # The key, the portal in the replica and the expiry setting in one look; the key's
        # invitation is read only when the key was used before.
        look = await repo.first_look(
            conn, data.idempotency_key, command.portal_id, command.portal_slug
        )
        if look.key_taken and await _answer_repeat(conn, data.idempotency_key):
            return
        try:
            checked = await check_invite(deps, command, look=look)
            # record_invite's transaction on the inbox connection is a savepoint: a resend
            # the caps refuse leaves nothing behind but the answer.
            _, outcome = await record_invite(
                deps, checked, key_checked=True, expiry_days=look.expiry_days
            )
        except DomainError as exc:
            if exc.code not in REJECT_REASONS:
                raise
            await _reject(conn, data, exc)
            return
        if outcome == "duplicate":
            # Lost a race with the same key delivered at the same time: answer like a repeat.
            await _answer_repeat(conn, data.idempotency_key)
        log.info("invitation_request_applied", outcome=outcome)


# Waits on identity and portals (who has access already): each such event in a
# transaction of its own, concurrently, not queued behind the others (Bus.consume).
ALONE = frozenset({"invitation.requested"})

# The outcomes that arrive together are written in one statement (libs/common/bus.py).
MAIL_OUTCOMES = Together(on_mail_outcomes)
HANDLERS: dict[str, ServiceHandler[Deps]] = {
    "portal.created": on_portal_changed,
    "portal.updated": on_portal_changed,
    "mail.sent": MAIL_OUTCOMES,
    "mail.retrying": on_mail_retrying,
    "mail.failed": MAIL_OUTCOMES,
    "invitation.requested": on_requested,
}
