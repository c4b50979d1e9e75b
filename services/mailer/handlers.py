"""Use cases: record a mail job; record what happened to a send. Each takes ``deps``
first and works on ``deps.db``; each state change and the event announcing it commit
together (outbox). The branding and webhook use cases (branding/, webhooks/) take the
same ``Deps``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from libs.common.db import Conn, UseCaseDeps, atomic, connection
from libs.common.events import (
    Envelope,
    MailFailed,
    MailForget,
    MailRetrying,
    MailSent,
    make_event,
)
from libs.common.logging import get_logger
from libs.common.outbox import append, change_and_append, changes_and_append
from libs.common.sealing import Unsealable
from libs.common.tracing import carrier

from . import repository
from .domain import (
    MAX_ERROR_LENGTH,
    Delivery,
    FailureReason,
    InvalidAddress,
    RequestMail,
    RetryReason,
    about,
    normalise_address,
)
from .metrics import EMAILS_WITHDRAWN
from .settings import MailerSettings
from .webhooks import repository as webhook_repository
from .webhooks.subscription import Subscription

log = get_logger(__name__)

SOURCE = "mailer"
# What a job's values can make the database refuse (a NUL in a text, say).
UNSTORABLE = (asyncpg.DataError, UnicodeEncodeError)


@dataclass(frozen=True)
class Deps(UseCaseDeps):
    """What the use cases need: ``db`` (the pool, or a consumer's connection) and
    ``clock`` from UseCaseDeps, and the settings (the first branding, the webhook
    sealer and limits)."""

    settings: MailerSettings
    # The event types the queue is bound to, settled as endpoints come and go.
    subscription: Subscription = field(default_factory=Subscription)


def stale_job(deps: Deps, envelope: Envelope) -> bool:
    """A mail job older than ``MAILER_RETENTION_DAYS`` is not sent: the record that makes a
    job delivered twice send once may already be pruned, so it may be one sent long ago
    and brought back. Nothing is announced either (a mail.failed would mark an email
    that went as failed); the log says so."""
    occurred_at = envelope.occurred_at
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    age = deps.clock() - occurred_at
    if age <= timedelta(days=deps.settings.mailer_retention_days):
        return False
    log.error(
        "mail_job_stale",
        message_id=str(envelope.id),
        occurred_at=occurred_at.isoformat(),
        retention_days=deps.settings.mailer_retention_days,
    )
    return True


async def prune_finished(deps: Deps) -> dict[str, int]:
    """Forget emails and webhook deliveries finished ``MAILER_RETENTION_DAYS`` ago, and
    the mail ids withdrawn as long ago."""
    before = deps.clock() - timedelta(days=deps.settings.mailer_retention_days)
    return {
        "deliveries": await repository.prune(deps.db, before),
        "withdrawn_mails": await repository.prune_withdrawn(deps.db, before),
        "webhook_deliveries": await webhook_repository.prune(deps.db, before),
    }


async def request_mails(deps: Deps, commands: Sequence[RequestMail]) -> dict[uuid.UUID, str]:
    """Record jobs (idempotent by mail_id) in one transaction (in a consumer's, its inbox
    transaction), the good ones in one statement. A job whose address can't go into a To
    header fails at once, without storing its link. If the statement for several fails,
    each is stored on its own and one that still can't be is refused (its neighbours are
    not held back); one job alone fails its message, which is retried.

    Returns the mail ids recorded now, each with its status: queued (the senders are
    woken at commit), or withdrawn (mail.withdraw came first)."""
    async with atomic(deps.db) as conn:
        good: list[tuple[RequestMail, str]] = []
        for command in commands:
            try:
                good.append((command, normalise_address(command.to)))
            except InvalidAddress as exc:
                reason = FailureReason.INVALID_ADDRESS
                await _refuse(conn, command, reason, f"invalid address: {exc}")
        # The sends, whenever they come, continue the trace of the request that asked.
        trace = carrier()
        if len(good) <= 1:
            queued = await repository.insert_queued(conn, good, trace) if good else {}
        else:
            queued = await _queue_many(conn, good, trace)
    for command, _ in good:
        status = queued.get(command.mail_id)
        if status == "queued":
            log.info("mail_queued", mail_id=str(command.mail_id), template=command.template)
        elif status == "withdrawn":
            log.info("mail_withdrawn_before_job", mail_id=str(command.mail_id))
        else:
            log.info("mail_duplicate_ignored", mail_id=str(command.mail_id))
    return queued


async def _queue_many(
    conn: Conn, good: Sequence[tuple[RequestMail, str]], trace: str | None
) -> dict[uuid.UUID, str]:
    try:
        async with conn.transaction():
            return await repository.insert_queued(conn, good, trace)
    except UNSTORABLE:
        log.info("mail_jobs_split", jobs=len(good))
    queued: dict[uuid.UUID, str] = {}
    for command, to_address in good:
        try:
            async with conn.transaction():
                queued |= await repository.insert_queued(conn, [(command, to_address)], trace)
        except UNSTORABLE as exc:
            reason = FailureReason.INVALID_CONTEXT
            await _refuse(conn, command, reason, f"the job can't be stored: {exc}")
    return queued


async def _refuse(conn: Conn, command: RequestMail, reason: FailureReason, error: str) -> None:
    if await repository.insert_failed(conn, command, error[:MAX_ERROR_LENGTH]):
        log.warning(f"mail_{reason.value}", mail_id=str(command.mail_id))
        await append(conn, _failed_event(command, reason, attempts=0))


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


async def end_withdrawn(deps: Deps, delivery: Delivery, claimed_at: datetime, error: str) -> bool:
    """A try that failed for now, of a delivery withdrawn while it was under way: it ends
    withdrawn, its context gone, instead of waiting for a retry (nothing announced).
    False when it wasn't withdrawn (or its claim was taken over)."""
    async with connection(deps.db) as conn:
        ended = await conn.fetchval(repository.END_WITHDRAWN, delivery.mail_id, claimed_at, error)
    return bool(ended)


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


async def withdraw_mails(deps: Deps, mail_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """mail.withdraw: none of these emails is sent from now on, unless a sender already
    holds it (that try finishes: docs/reliability.md). Nothing is announced: the
    invitations that asked show the email withdrawn themselves. Idempotent. The ids whose
    queued delivery was withdrawn now."""
    async with atomic(deps.db) as conn:
        withdrawn = await repository.withdraw(conn, mail_ids)
    EMAILS_WITHDRAWN.inc(len(withdrawn))
    log.info("mails_withdrawn", asked=len(mail_ids), withdrawn=len(withdrawn))
    return withdrawn


# What an erased person's delivery records say instead of their address.
ERASED_ADDRESS = "erased@erased.invalid"


def opened_addresses(deps: Deps, forget: MailForget) -> list[str]:
    """The addresses a mail.forget sealed (Unsealable: not under MAIL_JOB_KEY, or not a
    list of them)."""
    try:
        opened = orjson.loads(deps.settings.sealer().open_text(forget.sealed))
    except orjson.JSONDecodeError:
        opened = None
    if not isinstance(opened, list) or not all(isinstance(a, str) for a in opened):
        raise Unsealable("the mail.forget's sealed addresses are not a list of strings")
    return opened


async def forget_addresses(
    deps: Deps, addresses: Sequence[str], before: datetime
) -> tuple[int, int]:
    """mail.forget (a person was erased at ``before``): their delivery records keep no
    address, context or error, and the webhook deliveries naming them go; what came after
    is a new person's at the same address. Idempotent."""
    wanted = [a for a in addresses if a.strip()]
    async with atomic(deps.db) as conn:
        deliveries = await repository.forget_addresses(conn, wanted, ERASED_ADDRESS, before)
        webhooks = await webhook_repository.forget_addresses(conn, wanted, before)
    log.info("addresses_forgotten", deliveries=deliveries, webhook_deliveries=webhooks)
    return deliveries, webhooks
