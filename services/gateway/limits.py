"""Rate limits every gateway replica shares: windowed counters in PostgreSQL (the
gateway's own schema), one round trip per check, and the rules the pages apply.

Per client address, every unauthenticated POST counts (log in, accept, forgot and reset
password). Failed logins count per account *and* address (OWASP's per-account-per-IP
lockout): guessing someone's password from one address is slowed, yet the owner, from
any other address, still gets in with the right one. Reset emails are capped per address
and per email, so nobody can flood one inbox."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter

from libs.common.logging import get_logger

from . import repository
from .domain import retry_after, window_start

log = get_logger(__name__)

RATE_LIMITED = Counter(
    "clientpress_gateway_rate_limited_total", "Requests answered 429, by rule", ["rule"]
)


@dataclass(frozen=True)
class Rule:
    name: str
    limit: int
    window: int


class RateLimits:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        per_address: int,
        per_email: int,
        window: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.window = window
        # Every unauthenticated POST, per client address and form.
        self.address = Rule("address", per_address, window)
        # Failed logins, per account and client address.
        self.login_failures = Rule("login_failures", per_email, window)
        # Reset emails asked for one address, from anywhere.
        self.email = Rule("email", per_email, window)

    async def hit(self, rule: Rule, *subject: str) -> int:
        """Count an attempt; 0 when it is allowed, else the seconds to wait."""
        now = self.clock()
        start = window_start(now, rule.window)
        current, previous = await repository.hit(self.pool, _key(rule, subject), start, rule.window)
        return self._verdict(rule, now - start, current, previous)

    async def take_back(self, rule: Rule, *subject: str) -> None:
        """Uncount one hit of this window: an attempt counted before it was made (a log
        in counts as failed until it proves otherwise) that turned out not to be one."""
        start = window_start(self.clock(), rule.window)
        await repository.take_back(self.pool, _key(rule, subject), start)

    async def prune(self) -> None:
        deleted = await repository.prune(self.pool, self.clock())
        if deleted:
            log.info("rate_counters_pruned", rows=deleted)

    @staticmethod
    def _verdict(rule: Rule, elapsed: float, current: int, previous: int) -> int:
        wait = retry_after(rule.limit, rule.window, elapsed, current, previous)
        if wait:
            RATE_LIMITED.labels(rule.name).inc()
        return wait


def _key(rule: Rule, subject: tuple[str, ...]) -> bytes:
    return hashlib.sha256("\x1f".join((rule.name, *subject)).encode()).digest()
