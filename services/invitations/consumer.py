"""Events in: portal changes into the replica, mail outcomes into delivery status, and
``invitation.requested`` from other systems into the invite use case. Each handler gets
``Deps`` on the inbox transaction's connection (libs/common/bus.py ``in_inbox``), so what
it writes commits with the inbox row."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from libs.common.broker import CONSUMES, REQUESTS_QUEUE
from libs.common.bus import ServiceHandler, Together, arrival_context
from libs.common.context import current_sender
from libs.common.db import Conn, connection
from libs.common.email import same_email
from libs.common.errors import DomainError, InvalidInput, RateLimited
from libs.common.events import (
    Envelope,
    Event,
    EventData,
    InvitationCreated,
    InvitationRejected,
    InvitationRequested,
    InvitationResent,
    MailFailed,
    MailRetrying,
    MailSent,
    PortalChanged,
    UserDisabled,
    UserErased,
    UserRoleChanged,
    make_event,
)
from libs.common.logging import get_logger
from libs.common.outbox import append

from . import domain
from . import repository as repo
from .clients import PortalInfo
from .handlers import (
    SOURCE,
    CheckedInvite,
    Deps,
    Group,
    GroupCommand,
    InviteCommand,
    check_group,
    check_invite,
    erase_person,
    first_write,
    log_created,
    prepare_first,
    record_group,
    record_not_first,
    replay,
    revoke_sent_by,
    sends,
)
from .handlers.base import Row
from .handlers.key_cap import sender_fits_at
from .handlers.sending import GROUP_REF, INVITATION_REF, FirstSend, key_reused
from .metrics import REQUESTS_CAPPED
from .repository import NewInvitation

log = get_logger(__name__)

T = TypeVar("T")

BINDINGS = CONSUMES["invitations"]
# invitation.requested from other systems: a queue and consumer of their own
# (libs/common/broker.py), so a flood of them never holds back the events above.
REQUESTS = REQUESTS_QUEUE
REQUESTS_PREFETCH = 32

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
        # A name or message holding a character that would reorder what is shown around it.
        "invalid_character",
        "invalid_locale",
        "send_rate_limited",
        "integration_rate_limited",
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


async def on_user_erased(deps: Deps, envelope: Envelope, data: EventData) -> None:
    """The staff invitations the person sent go first (announced with the address they
    were sent to), then what invitations keep of the person."""
    assert isinstance(data, UserErased)
    await revoke_sent_by(deps, data.user_id, envelope.occurred_at, "sender_erased", envelope.actor)
    await erase_person(deps, data.user_id, envelope.occurred_at)


async def on_user_disabled(deps: Deps, envelope: Envelope, data: EventData) -> None:
    """A disabled Administrator's staff invitations can't make anyone Administrator or
    Staff any more (enabling the account again doesn't bring them back)."""
    assert isinstance(data, UserDisabled)
    await revoke_sent_by(
        deps, data.user_id, envelope.occurred_at, "sender_disabled", envelope.actor
    )


async def on_user_role_changed(deps: Deps, envelope: Envelope, data: EventData) -> None:
    """A role that can't send staff invitations takes the ones the person sent."""
    assert isinstance(data, UserRoleChanged)
    if domain.may_send_staff_invitations(data.role):
        return
    await revoke_sent_by(
        deps, data.user_id, envelope.occurred_at, "sender_role_changed", envelope.actor
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


async def _answer_repeat(conn: Conn, data: InvitationRequested) -> bool:
    """A retried request (its sender lost our answer, or the broker's confirm) makes
    nothing new but still gets an answer under its own correlation id: the original
    invitation, announced again with the same invitation id. The key with another address
    or portal is no retry: refused idempotency_key_reused, as the API does, never
    answered as if that address had been invited."""
    key = data.idempotency_key
    existing = await repo.find_by_key(conn, key)
    if existing is None:
        return False
    if not _same_request(existing, data):
        log.warning(
            "invitation_request_key_reused",
            idempotency_key=key,
            invitation_id=str(existing["id"]),
            sender=current_sender(),
        )
        await _reject(conn, data, key_reused())
        return True
    log.info("invitation_request_duplicate", idempotency_key=key)
    again = _created_again(existing, idempotency_key=key)
    await append(conn, make_event("invitation.created", again, source=SOURCE))
    return True


def _same_request(invitation: Row, data: InvitationRequested) -> bool:
    """Whether a request names the address and portal of the invitation its key made."""
    if not same_email(invitation["email"], data.email or ""):
        return False
    if data.portal_id is not None and data.portal_id != invitation["portal_id"]:
        return False
    slug = invitation["portal_slug"]
    return not data.portal_slug or (slug is not None and data.portal_slug.lower() == slug.lower())


async def _reject(conn: Conn, data: InvitationRequested, exc: DomainError) -> None:
    retry_at = exc.details.get("retry_at") if isinstance(exc, RateLimited) else None
    rejected = InvitationRejected(
        reason=exc.code,
        message=exc.message,
        idempotency_key=data.idempotency_key,
        email=(data.email or "")[:320] or None,
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
    command = GroupCommand.from_fields(
        data, email=data.email or "", portal_ids=tuple(data.portal_ids or ())
    )
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


@dataclass(frozen=True)
class _Request:
    """One invitation.requested of a run (one portal), with what its first look found."""

    envelope: Envelope
    data: InvitationRequested
    command: InviteCommand
    look: repo.FirstLook


@dataclass(frozen=True)
class _Refused:
    """A check's refusal that is the request's fault (``REJECT_REASONS``): answered with
    invitation.rejected. Any other error (a service away answers Unavailable, itself a
    DomainError) is raised, and the run is retried."""

    error: DomainError


async def on_requested(deps: Deps, events: Sequence[Event]) -> None:
    """A run of invitation.requested on the inbox transaction's connection (``deps.db``):
    each invitation, or each refusal's answer, commits with its inbox row. The run's
    checks wait on identity and portals together (their look-ups share requests) and its
    first invitations are one statement; each answer and log line is its own request's
    (``arrival_context``). Anything but a refusal fails the run, which the consumer then
    applies one event at a time."""
    async with connection(deps.db) as conn:
        budget = await _SenderBudget.of(conn, deps, events)
        run: list[_Request] = []
        for envelope, data in events:
            assert isinstance(data, InvitationRequested)
            if data.portal_ids is not None:
                # Several portals: on its own, after the requests before it.
                await _requests(conn, deps, run)
                run = []
                if await budget.refused(conn, envelope, data):
                    continue
                await _own(envelope, _requested_group(conn, deps, data))
                continue
            command = InviteCommand.from_fields(
                data, email=data.email or "", resend_reason="invitation_requested"
            )
            # The key, the portal in the replica and the expiry setting in one look; the
            # key's invitation is read only when the key was used before.
            look = await repo.first_look(
                conn, data.idempotency_key, command.portal_id, command.portal_slug
            )
            if look.key_taken and await _own(envelope, _answer_repeat(conn, data)):
                continue
            if await budget.refused(conn, envelope, data):
                continue
            run.append(_Request(envelope, data, command, look))
        await _requests(conn, deps, run)
        await budget.record(conn)


def _sender(envelope: Envelope) -> str:
    """The broker user that sent the request ('' when it gave no user_id)."""
    return arrival_context(envelope).run(current_sender) or ""


class _SenderBudget:
    """The cap on invitation.requested per integration (its broker user) in any hour
    (INVITATIONS_REQUESTS_PER_INTEGRATION_HOUR): a leaked or looping integration gets
    invitation.rejected integration_rate_limited beyond it, and the log and
    clientpress_invitation_requests_capped_total name it. Runs under way together (other
    replicas, concurrent batches) don't see each other's count: they may pass the cap by
    what they hold, at most the prefetch each, rather than wait on one another."""

    def __init__(
        self, deps: Deps, now: datetime, left: dict[str, int], *, counting: bool = True
    ) -> None:
        self.deps, self.now, self.left, self.counting = deps, now, left, counting
        self.taken: list[tuple[str, datetime]] = []

    @classmethod
    async def of(cls, conn: Conn, deps: Deps, events: Sequence[Event]) -> _SenderBudget:
        now = deps.clock()
        cap = deps.settings.invitations_requests_per_integration_hour
        senders = sorted({_sender(envelope) for envelope, _ in events})
        if not cap:  # no cap (0): nothing counted, nothing refused
            return cls(deps, now, dict.fromkeys(senders, len(events)), counting=False)
        taken = await repo.senders_taken(conn, senders, domain.sender_window(now))
        return cls(deps, now, {sender: cap - n for sender, n in taken.items()})

    async def refused(self, conn: Conn, envelope: Envelope, data: InvitationRequested) -> bool:
        """Whether the request is past its sender's cap (then answered), else counted."""
        sender = _sender(envelope)
        if self.left[sender] > 0:
            self.left[sender] -= 1
            self.taken.append((sender, self.now))
            return False
        cap = self.deps.settings.invitations_requests_per_integration_hour
        until = await sender_fits_at(conn, sender, self.now, cap)
        REQUESTS_CAPPED.labels(sender or "unnamed").inc()
        refusal = domain.sender_limited(sender, until, self.now, limit=cap)
        context = arrival_context(envelope)
        context.run(
            log.warning,
            "invitation_request_integration_capped",
            sender=sender or None,
            cap=cap,
            retry_at=until.isoformat(),
        )
        await asyncio.create_task(_reject(conn, data, refusal), context=context)
        return True

    async def record(self, conn: Conn) -> None:
        if self.taken and self.counting:
            await repo.record_sender_requests(conn, self.taken)
            self.taken = []


def _own(envelope: Envelope, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Work that is one request's own, in the context it arrived in."""
    return asyncio.create_task(work, context=arrival_context(envelope))


async def _requests(conn: Conn, deps: Deps, run: Sequence[_Request]) -> None:
    if not run:
        return
    checked = await _checked(deps, run)
    firsts: list[tuple[_Request, CheckedInvite, FirstSend, repo.FirstWrite]] = []
    now = deps.clock()
    for request, verdict in zip(run, checked, strict=True):
        if isinstance(verdict, _Refused):
            await _own(request.envelope, _reject(conn, request.data, verdict.error))
            continue
        days = request.command.expires_in_days or request.look.expiry_days
        first, write = arrival_context(request.envelope).run(_prepared, deps, verdict, now, days)
        firsts.append((request, verdict, first, write))
    if not firsts:
        return
    created = await repo.insert_firsts(conn, [write for *_, write in firsts], sends.FIRST)
    for request, verdict, first, _ in firsts:
        (row,) = first.rows
        if row.invitation_id in created:
            arrival_context(request.envelope).run(_applied_first, row)
        else:
            # A pending invitation, a key used before or a race: the transaction's path.
            await _own(request.envelope, _not_first(conn, deps, request, verdict, first))


def _prepared(
    deps: Deps, checked: CheckedInvite, now: datetime, days: int
) -> tuple[FirstSend, repo.FirstWrite]:
    """A request's first invitation and its write, in the request's context."""
    first = prepare_first(deps, checked, now, days)
    return first, first_write(first)


def _applied_first(row: NewInvitation) -> None:
    log_created(row)
    log.info("invitation_request_applied", outcome="created")


async def _checked(deps: Deps, run: Sequence[_Request]) -> list[CheckedInvite | _Refused]:
    """Each request's check, or the refusal it earns; any other error is raised. A portal
    the replica holds as Active needs no database: those are checked at once (their
    look-ups of who has access go to identity together); the others, which may write the
    replica, one after another."""

    async def check(request: _Request) -> CheckedInvite | _Refused:
        try:
            return await check_invite(deps, request.command, look=request.look)
        except DomainError as exc:
            if exc.code not in REJECT_REASONS:
                raise
            return _Refused(exc)

    def at_once(request: _Request) -> bool:
        portal = request.look.portal
        return portal is not None and portal.status == "active"

    # In the run's order: the answers of those checked at once, the others' as they come.
    answers = iter(
        await asyncio.gather(
            *(_own(r.envelope, check(r)) for r in run if at_once(r)), return_exceptions=True
        )
    )
    checked: list[CheckedInvite | _Refused] = []
    for request in run:
        if at_once(request):
            verdict = next(answers)
        else:
            verdict = await _own(request.envelope, check(request))
        if isinstance(verdict, BaseException):
            raise verdict
        checked.append(verdict)
    return checked


async def _not_first(
    conn: Conn, deps: Deps, request: _Request, checked: CheckedInvite, first: FirstSend
) -> None:
    try:
        # Its transaction on the inbox connection is a savepoint: a resend the caps refuse
        # leaves nothing behind but the answer.
        row, outcome = await record_not_first(deps, checked, first, key_checked=True)
    except DomainError as exc:
        if exc.code not in REJECT_REASONS:
            raise
        await _reject(conn, request.data, exc)
        return
    # Lost a race with the same key delivered at the same time: answered like a repeat. Or
    # the retry of a request that resent a pending invitation (its key is the one that last
    # sent the link, not the one that made it): answered with that resend again, sending
    # nothing. Unanswered, a retry after a lost answer or confirm waited for ever.
    if outcome == "duplicate" and not await _answer_repeat(conn, request.data):
        await _resent_again(conn, row)
    log.info("invitation_request_applied", outcome=outcome)


async def _resent_again(conn: Conn, row: Row) -> None:
    """invitation.resent announced again to a retried request, from the invitation's row."""
    log.info("invitation_request_duplicate", invitation_id=str(row["id"]))
    again = InvitationResent(
        invitation_id=row["id"],
        portal_id=row["portal_id"],
        email=row["email"],
        expires_at=row["expires_at"],
        expires_in_days=row["expires_in_days"],
        idempotency_key=row["idempotency_key"],
        reason="invitation_requested",
        invited_by=row["invited_by"],
        group_id=row["group_id"],
        locale=row["locale"],
    )
    await append(conn, make_event("invitation.resent", again, source=SOURCE))


# Waits on identity and portals (who has access already): apart from the other events,
# not queued behind them; its runs share a group commit of their own (Bus.consume).
ALONE = frozenset({"invitation.requested"})

# The outcomes that arrive together are written in one statement (libs/common/bus.py).
MAIL_OUTCOMES = Together(on_mail_outcomes)
REQUESTED = Together(on_requested)
REQUEST_HANDLERS: dict[str, ServiceHandler[Deps]] = {"invitation.requested": REQUESTED}
HANDLERS: dict[str, ServiceHandler[Deps]] = {
    "portal.created": on_portal_changed,
    "portal.updated": on_portal_changed,
    "mail.sent": MAIL_OUTCOMES,
    "mail.retrying": on_mail_retrying,
    "mail.failed": MAIL_OUTCOMES,
    # The main queue is no longer bound to it, but an installation upgraded from a release
    # where it was may still hold requests there: they are applied, once (the inbox is
    # the service's, whichever queue an event came through).
    **REQUEST_HANDLERS,
    "identity.user.erased": on_user_erased,
    "identity.user.disabled": on_user_disabled,
    "identity.user.role_changed": on_user_role_changed,
}
