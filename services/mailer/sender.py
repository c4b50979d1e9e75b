"""The senders: MAILER_CONCURRENCY workers that claim due deliveries, render and send
them, and record the outcome. Woken by NOTIFY when a job is recorded (and by a timer when
a retry falls due), with a 1 s poll as the safety net.

Delivery is at-least-once: a worker that dies between the SMTP answer and the commit
leaves its row in 'sending'; after MAILER_STUCK_SENDING_SECONDS the row is queued again and
the email may go out twice (same Message-ID, so clients can recognise the copy)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog
from opentelemetry.trace import SpanKind

from libs.common import tracing
from libs.common.batching import GroupCommit
from libs.common.context import set_correlation_id
from libs.common.db import DATABASE_AWAY, Listener, connection
from libs.common.i18n import DEFAULT_LANGUAGE, is_language
from libs.common.logging import get_logger
from libs.common.sealing import Unsealable

from . import handlers, repository
from .branding.cache import BrandingSource
from .domain import (
    Delivery,
    FailureReason,
    InvalidAddress,
    InvalidContext,
    abandoned,
    after_failure,
    clip_error,
    judge_smtp_code,
    next_attempt_at,
    normalise_address,
    retry_reason,
    without_links,
)
from .handlers import Deps
from .metrics import (
    EMAILS_FAILED,
    EMAILS_QUEUED,
    EMAILS_RETRIED,
    EMAILS_SENT,
    EMAILS_WITHDRAWN,
    SMTP_SEND_SECONDS,
)
from .rendering import (
    LINKS,
    REPLY_TO_TEMPLATES,
    Templates,
    branded_from,
    build_message,
    with_branding,
)
from .smtp import SendError, SmtpTransport

log = get_logger(__name__)

POLL_SECONDS = 1.0
MAINTENANCE_SECONDS = 5.0
STOP_GRACE_SECONDS = 15.0
FINISH_PATIENCE_SECONDS = 60.0
# How long a claim whose answer was lost is handed back again by each maintenance pass:
# the server may still run the statement after the connection dropped, and commits it
# within its command timeout.
LOST_CLAIM_SECONDS = 60.0


async def stop_workers(
    workers: Sequence[asyncio.Task[None]], maintenance: asyncio.Task[None] | None, grace: float
) -> None:
    """Let each worker finish what it holds (up to ``grace`` seconds), then end them all;
    the maintenance task has nothing to finish and ends at once (waiting out its sleep
    held a stop for seconds)."""
    if maintenance is not None:
        maintenance.cancel()
    if workers:
        _, pending = await asyncio.wait(workers, timeout=grace)
        for task in pending:
            task.cancel()
    await asyncio.gather(*workers, *([maintenance] if maintenance else []), return_exceptions=True)


def database_now(claimed_at: datetime, since: float) -> datetime:
    """Now on the database server's clock: the claim's time (its ``clock_timestamp()``)
    plus what the event loop's monotonic clock says has passed ``since`` it. The queue is
    read on that clock (``next_attempt_at <= now()``) and a job's horizon starts on it
    (``created_at``): planned on this host's clock instead, a mailer ten minutes behind
    the database retried every failing email at once, and one ahead gave up early."""
    return claimed_at + timedelta(seconds=max(asyncio.get_running_loop().time() - since, 0.0))


class Sender:
    def __init__(self, deps: Deps, branding: BrandingSource | None = None) -> None:
        self.deps = deps
        self.settings = settings = deps.settings
        self.branding = branding or BrandingSource(deps, settings.mailer_branding_cache_seconds)
        self.policy = settings.retry_policy
        self.templates = Templates(settings.mail_templates_dir)
        self.sealer = settings.sealer()
        self._stopping = False
        self._wakes: list[asyncio.Event] = []
        self._idle: collections.deque[asyncio.Event] = collections.deque()
        self._next_busy = 0
        self._workers: list[asyncio.Task[None]] = []
        self._maintenance: asyncio.Task[None] | None = None
        # Claims we never heard the answer to, and until when each is handed back.
        self._lost_claims: dict[uuid.UUID, float] = {}
        self._listener = Listener(
            settings.service_database_url("mailer"),
            repository.WAKE_CHANNEL,
            self.wake_one,
            name="mailer",
            service="mailer",
        )
        # The workers' claims, and their sends' outcomes, each gathered into one statement
        # while the previous one runs (group commit): under load a few statements carry
        # many emails; alone, a worker's claim or outcome is written at once, as before.
        self._claims = GroupCommit(self._claim_many, max_batch=settings.mailer_concurrency)
        self._sent = GroupCommit(
            functools.partial(handlers.record_sent_many, deps),
            max_batch=settings.mailer_concurrency,
        )

    async def start(self) -> None:
        await self._recover()
        await self._listener.ensure()
        for index in range(self.settings.mailer_concurrency):
            wake = asyncio.Event()
            self._wakes.append(wake)
            self._workers.append(
                asyncio.create_task(self._work(wake), name=f"mailer-sender-{index}")
            )
        self._maintenance = asyncio.create_task(self._maintain(), name="mailer-maintenance")

    def wake(self, *_: object) -> None:
        """Every worker looks again (retries falling due, recovered rows, stopping)."""
        for event in self._wakes:
            event.set()

    def wake_one(self, *_: object) -> None:
        """One new job: one worker looks, not all of them (waking all sixteen per job
        made 2.2 claim queries per email, most of them finding nothing). An idle worker
        if there is one; else a busy one, which looks again when its send is done."""
        if self._idle:
            self._idle.popleft().set()
        elif self._wakes:
            self._next_busy = (self._next_busy + 1) % len(self._wakes)
            self._wakes[self._next_busy].set()

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Let each worker finish the send in hand, then end them all."""
        self._stopping = True
        self.wake()
        await stop_workers(self._workers, self._maintenance, grace)
        await self._listener.close()

    async def _work(self, wake: asyncio.Event) -> None:
        transport = SmtpTransport(self.settings)
        try:
            while not self._stopping:
                # Cleared before looking, so a wake during the look is not lost.
                wake.clear()
                try:
                    busy = await self.send_next(transport)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("mailer_worker_error", error=type(exc).__name__)
                    busy = False
                if not busy and not self._stopping:
                    self._idle.append(wake)
                    try:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(wake.wait(), timeout=POLL_SECONDS)
                    finally:
                        with contextlib.suppress(ValueError):
                            self._idle.remove(wake)
        finally:
            with contextlib.suppress(Exception):
                await transport.close()

    async def send_next(self, transport: SmtpTransport) -> bool:
        """Claim one due delivery and carry it to an outcome; False when none was due."""
        claimed = await self._claims(None)
        if claimed is None:
            return False
        delivery, claimed_at = claimed
        # Continues the trace of the request that asked for the mail, however long after.
        with tracing.resumed(delivery.trace_context):
            await self._carry(delivery, claimed_at, transport)
        return True

    async def _claim_many(self, wanted: Sequence[None]) -> list[tuple[Delivery, datetime] | None]:
        """One claim for every worker asking at once: a delivery each while there are."""
        claim_id = uuid.uuid4()
        try:
            claimed = await handlers.claim(self.deps, len(wanted), claim_id)
        except DATABASE_AWAY:
            # The claim may have committed without our hearing of it: hand such rows back
            # now, rather than leave them 'sending' until the stuck-row sweep. The server
            # may also still run it (the connection dropped while it was on its way) and
            # commit it after this: each maintenance pass hands it back again for a while.
            self._lost_claims[claim_id] = asyncio.get_running_loop().time() + LOST_CLAIM_SECONDS
            await self._finish(lambda deps: handlers.release_claim(deps, claim_id))
            raise
        return [*claimed, *[None] * (len(wanted) - len(claimed))]

    async def _carry(
        self, delivery: Delivery, claimed_at: datetime, transport: SmtpTransport
    ) -> None:
        """Render, send and record one claimed delivery."""
        since = asyncio.get_running_loop().time()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            mail_id=str(delivery.mail_id), template=delivery.template
        )
        if delivery.correlation_id:
            set_correlation_id(delivery.correlation_id)
        if abandoned(
            delivery.attempts,
            delivery.queued_at,
            claimed_at,
            self.policy,
            self.settings.mailer_stuck_sending_seconds,
        ):
            await self._fail(
                delivery, claimed_at, FailureReason.RETRIES_EXHAUSTED, "retry horizon passed"
            )
            return
        # Read at each send (within the cache's few seconds), so a change of Settings →
        # Branding reaches the next email, retries included, on every replica.
        branding = await self.branding.get()
        try:
            to = normalise_address(delivery.to_address)
            context = self.sealer.unseal(delivery.context)
            message = build_message(
                self.templates.render(
                    delivery.template,
                    with_branding(context, branding, self.settings.public_base),
                    # The job's language, else the agency's (Settings → Branding).
                    language=(
                        delivery.locale if is_language(delivery.locale) else branding.default_locale
                    )
                    or DEFAULT_LANGUAGE,
                    time_zone=branding.time_zone or "UTC",
                ),
                mail_id=delivery.mail_id,
                to=to,
                mail_from=branded_from(self.settings.mail_from, branding),
                reply_to=branding.reply_to if delivery.template in REPLY_TO_TEMPLATES else None,
                now=datetime.now(UTC),
                site_host=self.settings.public_url.host or "",
            )
        except InvalidAddress as exc:
            await self._fail(delivery, claimed_at, FailureReason.INVALID_ADDRESS, str(exc))
            return
        except InvalidContext as exc:
            await self._fail(delivery, claimed_at, FailureReason.INVALID_CONTEXT, str(exc))
            return
        except Unsealable as exc:
            # Not written by identity or invitations with our key: never sent.
            log.error("mail_job_unsealed_refused", reason=str(exc))
            await self._fail(delivery, claimed_at, FailureReason.INVALID_CONTEXT, str(exc))
            return
        started = time.perf_counter()
        try:
            with tracing.span(
                "smtp send",
                SpanKind.CLIENT,
                {"mail.template": delivery.template, "mail.id": str(delivery.mail_id)},
            ):
                await transport.send(message)
        except SendError as exc:
            took = time.perf_counter() - started
            # The server's own words, without the job's links it may quote.
            links = [str(context[key]) for key in LINKS if context.get(key)]
            detail = clip_error(without_links(str(exc), links))
            await self._after_error(delivery, claimed_at, exc.code, detail, since, took)
            return
        SMTP_SEND_SECONDS.labels("sent").observe(time.perf_counter() - started)
        if await self._finish(lambda _: self._sent((delivery, claimed_at, tracing.carrier()))):
            EMAILS_SENT.labels(delivery.template).inc()
            log.info("mail_sent", attempts=delivery.attempts)

    async def _after_error(
        self,
        delivery: Delivery,
        claimed_at: datetime,
        code: int | None,
        detail: str,
        since: float,
        took: float,
    ) -> None:
        now = database_now(claimed_at, since)
        reason = after_failure(judge_smtp_code(code), delivery.queued_at, now, self.policy)
        SMTP_SEND_SECONDS.labels("retry" if reason is None else "failed").observe(took)
        if reason is not None:
            await self._fail(delivery, claimed_at, reason, detail)
            return
        if await self._finish(
            lambda deps: handlers.end_withdrawn(deps, delivery, claimed_at, detail)
        ):
            EMAILS_WITHDRAWN.inc()
            log.info("mail_withdrawn_after_try", attempts=delivery.attempts, smtp_code=code)
            return
        next_at = next_attempt_at(delivery.attempts, delivery.queued_at, now, self.policy)
        why = retry_reason(code)
        if await self._finish(
            lambda deps: handlers.record_retry(
                deps, delivery, claimed_at, next_at, detail, why, code
            )
        ):
            EMAILS_RETRIED.labels(delivery.template).inc()
            delay = max((next_at - now).total_seconds(), 0.0)
            log.warning(
                "mail_send_retry",
                attempts=delivery.attempts,
                smtp_code=code,
                error=detail,
                retry_in=round(delay, 3),
                next_attempt_at=next_at.isoformat(),
            )
            # Wake a worker when it falls due, rather than at the next poll.
            asyncio.get_running_loop().call_later(delay, self.wake)

    async def _fail(
        self, delivery: Delivery, claimed_at: datetime, reason: FailureReason, error: str
    ) -> None:
        if await self._finish(
            lambda deps: handlers.record_failure(deps, delivery, claimed_at, reason, error)
        ):
            EMAILS_FAILED.labels(delivery.template).inc()
            log.warning("mail_failed", reason=reason.value, attempts=delivery.attempts, error=error)

    async def _finish(self, write: Callable[[Deps], Awaitable[bool]]) -> bool:
        """Record an outcome, riding out a database outage (a restart included): giving
        up here would leave the row in 'sending' and, after recovery, send the email
        again."""
        loop = asyncio.get_running_loop()
        give_up, pause = loop.time() + FINISH_PATIENCE_SECONDS, 0.2
        while True:
            try:
                return await write(self.deps)
            except DATABASE_AWAY as exc:
                if loop.time() >= give_up:
                    raise
                log.warning("mail_outcome_retry", error=type(exc).__name__)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_SECONDS)
            try:
                await self._listener.ensure()
                await self._recover()
                async with connection(self.deps.db) as conn:
                    EMAILS_QUEUED.set(await repository.count_queued(conn))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("mailer_maintenance_failed", error=type(exc).__name__)

    async def _recover(self) -> None:
        now = asyncio.get_running_loop().time()
        for claim_id, until in list(self._lost_claims.items()):
            if until < now:
                del self._lost_claims[claim_id]
            elif await handlers.release_claim(self.deps, claim_id):
                del self._lost_claims[claim_id]
                self.wake()
        async with connection(self.deps.db) as conn:
            count = await repository.requeue_stuck(conn, self.settings.mailer_stuck_sending_seconds)
            # What went back to the queue after its withdrawal keeps no link there.
            withdrawn = await repository.withdraw_queued(conn)
        if withdrawn:
            EMAILS_WITHDRAWN.inc(withdrawn)
            log.info("mail_withdrawn_after_try", count=withdrawn)
        if count:
            log.warning("mail_stuck_requeued", count=count)
            self.wake()
