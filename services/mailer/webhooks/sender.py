"""The webhook senders: WEBHOOKS_CONCURRENCY workers that claim due deliveries, sign and
POST them, and record the outcome. Woken by NOTIFY when deliveries are queued (and by a
timer when a retry falls due), with a 1 s poll as the safety net.

At least once: a worker that dies between the answer and the commit leaves its row in
'sending'; it is queued again later and the receiver sees the same ``webhook-id`` twice
(Standard Webhooks receivers deduplicate on it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime

import aiohttp
import asyncpg

from libs.common.db import Listener
from libs.common.logging import get_logger
from libs.common.sealing import Sealer, Unsealable

from ..domain import RetryPolicy, abandoned, next_attempt_at
from ..metrics import WEBHOOKS_DELIVERED, WEBHOOKS_FAILED, WEBHOOKS_RETRIED
from ..sender import database_now, stop_workers
from ..settings import MailerSettings
from . import domain, repository
from .domain import Attempt, RefusedTarget
from .repository import Claimed
from .targets import GuardedResolver, literal_problem

log = get_logger(__name__)

POLL_SECONDS = 1.0
MAINTENANCE_SECONDS = 5.0
# An answer's body is not needed; read at most this much so the connection can be reused.
MAX_BODY_BYTES = 64 * 1024


class WebhookSender:
    def __init__(self, pool: asyncpg.Pool, settings: MailerSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.policy: RetryPolicy = settings.webhook_policy
        self.sealer: Sealer = settings.webhook_sealer()
        self.allow_private = settings.webhooks_allow_private
        # A claim older than this belongs to a worker that died mid-POST.
        self.stuck_seconds = 2 * settings.webhooks_timeout_seconds + 30
        # An endpoint's share of the workers while others have deliveries due: a receiver
        # that hangs holds at most half of them then, whatever its backlog of retries.
        self.share = max(1, settings.webhooks_concurrency // 2)
        self.depth = settings.webhooks_concurrency
        self._stopping = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._maintenance: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._listener = Listener(
            settings.service_database_url("mailer"),
            repository.WAKE_CHANNEL,
            self.wake,
            name="webhook",
            service="mailer",
        )

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            # Every connection resolves through the guard (no cache to skip it).
            resolver=None if self.allow_private else GuardedResolver(),
            use_dns_cache=False,
            limit=self.settings.webhooks_concurrency * 2,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.settings.webhooks_timeout_seconds),
            # No proxy from the environment, no cookies kept between receivers.
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        await self._listener.ensure()
        for index in range(self.settings.webhooks_concurrency):
            self._tasks.append(asyncio.create_task(self._work(), name=f"webhook-sender-{index}"))
        self._maintenance = asyncio.create_task(self._maintain(), name="webhook-maintenance")

    def wake(self, *_: object) -> None:
        self._wake.set()

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping = True
        self.wake()
        await stop_workers(self._tasks, self._maintenance, grace)
        if self._session is not None:
            await self._session.close()
        await self._listener.close()

    async def _work(self) -> None:
        while not self._stopping:
            try:
                busy = await self.deliver_next()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("webhook_worker_error", error=type(exc).__name__)
                busy = False
            if not busy and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=POLL_SECONDS)
                self._wake.clear()

    async def deliver_next(self) -> bool:
        """Claim one due delivery and carry it to an outcome; False when none was due."""
        async with self.pool.acquire() as conn:
            claimed = await repository.claim_due(conn, self.share, self.depth)
        if claimed is None:
            return False
        since = asyncio.get_running_loop().time()
        if abandoned(
            claimed.attempts, claimed.queued_at, claimed.claimed_at, self.policy, self.stuck_seconds
        ):
            # Still here well past its horizon: its tries kept dying with their workers.
            await self._record(claimed, Attempt(None, 0, "retry horizon passed"), final=True)
            return True
        try:
            secrets = [self.sealer.open_text(claimed.secret_sealed)]
            if claimed.previous_sealed:
                secrets.append(self.sealer.open_text(claimed.previous_sealed))
        except Unsealable as exc:
            log.error("webhook_secret_unsealable", delivery_id=str(claimed.id), reason=str(exc))
            await self._record(claimed, Attempt(None, 0, "signing secret unusable"), final=True)
            return True
        attempt = await self.post(claimed, secrets)
        if attempt.delivered:
            await self._record(claimed, attempt)
            return True
        # The queue's clock, the database's, whatever this host's says (database_now).
        now = database_now(claimed.claimed_at, since)
        final = attempt.error is not None and attempt.error.startswith("refused:")
        final = final or now >= self.policy.give_up_at(claimed.queued_at)
        await self._record(claimed, attempt, final=final, now=now)
        return True

    async def post(self, claimed: Claimed, secrets: list[str]) -> Attempt:
        assert self._session is not None
        problem = None if self.allow_private else literal_problem(claimed.url)
        if problem is not None:
            return Attempt(None, 0, f"refused: {problem}")
        body = claimed.payload.encode()
        headers = domain.headers(secrets, claimed.id, int(time.time()), body)
        started = time.monotonic()
        try:
            async with self._session.post(
                claimed.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.content.read(MAX_BODY_BYTES)
                status = response.status
        except RefusedTarget as exc:
            return Attempt(None, _ms(started), f"refused: {exc}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, RefusedTarget):
                return Attempt(None, _ms(started), f"refused: {cause}")
            return Attempt(None, _ms(started), domain.clip(f"{type(exc).__name__}: {exc}"))
        error = None
        if 300 <= status <= 399:
            error = "redirect not followed"
        elif not 200 <= status <= 299:
            error = f"answered {status}"
        return Attempt(status, _ms(started), error)

    async def _record(
        self,
        claimed: Claimed,
        attempt: Attempt,
        *,
        final: bool = False,
        now: datetime | None = None,
    ) -> None:
        async with self.pool.acquire() as conn:
            if attempt.delivered:
                assert attempt.status is not None
                await repository.mark_delivered(conn, claimed, attempt.status, attempt.duration_ms)
                WEBHOOKS_DELIVERED.inc()
                log.info(
                    "webhook_delivered",
                    delivery_id=str(claimed.id),
                    status=attempt.status,
                    attempts=claimed.attempts,
                    duration_ms=attempt.duration_ms,
                )
                return
            next_at = None
            if not final:
                now = now or claimed.claimed_at
                next_at = next_attempt_at(claimed.attempts, claimed.queued_at, now, self.policy)
            await repository.mark_retry(
                conn, claimed, next_at, attempt.status, attempt.duration_ms, attempt.error
            )
        (WEBHOOKS_FAILED if next_at is None else WEBHOOKS_RETRIED).inc()
        log.warning(
            "webhook_failed" if next_at is None else "webhook_retry",
            delivery_id=str(claimed.id),
            status=attempt.status,
            error=attempt.error,
            attempts=claimed.attempts,
            next_attempt_at=next_at.isoformat() if next_at else None,
        )
        if next_at is not None:
            delay = max((next_at - (now or next_at)).total_seconds(), 0.0)
            asyncio.get_running_loop().call_later(delay, self.wake)

    async def _maintain(self) -> None:
        while not self._stopping:
            await asyncio.sleep(MAINTENANCE_SECONDS)
            try:
                await self._listener.ensure()
                async with self.pool.acquire() as conn:
                    count = await repository.requeue_stuck(conn, self.stuck_seconds)
                if count:
                    log.warning("webhook_stuck_requeued", count=count)
                    self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook_maintenance_failed", error=type(exc).__name__)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
