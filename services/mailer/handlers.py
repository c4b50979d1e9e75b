"""Use cases: record a mail job; record what happened to a send. Each takes ``deps``
first and works on ``deps.db``; each state change and the event announcing it commit
together (outbox). The branding and webhook use cases (branding/, webhooks/) take the
same ``Deps``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from libs.common.db import UseCaseDeps, atomic, connection
from libs.common.events import Envelope, MailFailed, MailRetrying, MailSent, make_event
from libs.common.logging import get_logger
from libs.common.outbox import append, change_and_append, changes_and_append
from libs.common.tracing import carrier

from . import repository
from .domain import (
    Delivery,
    FailureReason,
    InvalidAddress,
    RequestMail,
    RetryReason,
    about,
    normalise_address,
)
from .settings import MailerSettings

log = get_logger(__name__)

SOURCE = "mailer"


@dataclass(frozen=True)
class Deps(UseCaseDeps):
    """What the use cases need: ``db`` (the pool, or a consumer's connection) and
    ``clock`` from UseCaseDeps, and the settings (the first branding, the webhook
    sealer and limits)."""

    settings: MailerSettings


async def request_mail(deps: Deps, command: RequestMail) -> bool:
    """Record the job (idempotent by mail_id), in one transaction (in a consumer's, its
    inbox transaction: a failure fails the message, so no savepoint is needed).

    Returns True when a new delivery was queued and the senders should be woken. A job
    whose address can't go into a To header fails at once, without storing its link."""
    async with atomic(deps.db) as conn:
        try:
            to_address = normalise_address(command.to)
        except InvalidAddress as exc:
            error = f"invalid address: {exc}"[:500]
            if await repository.insert_failed(conn, command, error):
                log.warning("mail_invalid_address", mail_id=str(command.mail_id))
                failed = _failed_event(command, FailureReason.INVALID_ADDRESS, attempts=0)
                await append(conn, failed)
            return False
        # The send, whenever it comes, continues the trace of the request that asked.
        queued = await repository.insert_queued(conn, command, to_address, carrier())
        if queued:
            log.info("mail_queued", mail_id=str(command.mail_id), template=command.template)
        else:
            log.info("mail_duplicate_ignored", mail_id=str(command.mail_id))
        return queued


async def record_sent(deps: Deps, delivery: Delivery, claimed_at: datetime) -> bool:
    return (await record_sent_many(deps, [(delivery, claimed_at, carrier())]))[0]


async def record_sent_many(
    deps: Deps, sends: Sequence[tuple[Delivery, datetime, str | None]]
) -> list[bool]:
    """Mark many sends done and announce each (``mail.sent``), in one statement: the
    senders' outcomes gathered while the previous write ran (libs/common/batching). Each
    send is ``(delivery, claimed_at, trace_context)``; True for each recorded now, False
    for one whose claim was taken over meanwhile (crash recovery re-queued it)."""
    events = [
        (
            delivery.mail_id,
            make_event(
                "mail.sent",
                MailSent(**about(delivery)),
                source=SOURCE,
                correlation_id=delivery.correlation_id,
            ),
            trace,
        )
        for delivery, _, trace in sends
    ]
    async with connection(deps.db) as conn:
        recorded = await changes_and_append(
            conn,
            repository.MARK_SENT,
            (
                [delivery.mail_id for delivery, _, _ in sends],
                [claimed_at for _, claimed_at, _ in sends],
            ),
            events,
        )
    return [delivery.mail_id in recorded for delivery, _, _ in sends]


async def record_retry(
    deps: Deps,
    delivery: Delivery,
    claimed_at: datetime,
    next_attempt_at: datetime,
    error: str,
    reason: RetryReason,
    smtp_code: int | None,
) -> bool:
    """Queue the delivery for its next try and say so: the Invitations screen shows
    "Retrying" with that time. The server's own words stay in ``last_error``."""
    retrying = make_event(
        "mail.retrying",
        MailRetrying(
            **about(delivery),
            attempt=delivery.attempts,
            next_attempt_at=next_attempt_at,
            reason=reason.value,
            smtp_code=smtp_code,
        ),
        source=SOURCE,
        correlation_id=delivery.correlation_id,
    )
    # One statement (change_and_append), so atomic without a transaction.
    async with connection(deps.db) as conn:
        return await change_and_append(
            conn,
            repository.RESCHEDULE,
            (delivery.mail_id, claimed_at, next_attempt_at, error),
            retrying,
        )


async def record_failure(
    deps: Deps, delivery: Delivery, claimed_at: datetime, reason: FailureReason, error: str
) -> bool:
    failed = _failed_event(delivery, reason, attempts=delivery.attempts)
    async with connection(deps.db) as conn:
        return await change_and_append(
            conn, repository.MARK_FAILED, (delivery.mail_id, claimed_at, error), failed
        )


def _failed_event(
    mail: RequestMail | Delivery, reason: FailureReason, *, attempts: int
) -> Envelope:
    return make_event(
        "mail.failed",
        MailFailed(**about(mail), reason=reason.value, attempts=attempts),
        source=SOURCE,
        correlation_id=mail.correlation_id,
    )


async def claim_next(
    deps: Deps, claim_id: uuid.UUID | None = None
) -> tuple[Delivery, datetime] | None:
    claimed = await claim(deps, 1, claim_id)
    return claimed[0] if claimed else None


async def claim(
    deps: Deps, limit: int, claim_id: uuid.UUID | None = None
) -> list[tuple[Delivery, datetime]]:
    """Take up to ``limit`` due deliveries for sending, under one ``claim_id``."""
    async with connection(deps.db) as conn:
        return await repository.claim_due(conn, limit, claim_id)


async def release_claim(deps: Deps, claim_id: uuid.UUID) -> bool:
    async with connection(deps.db) as conn:
        return await repository.release_claim(conn, claim_id)
