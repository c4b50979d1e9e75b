"""Helpers for identity tests: a settable clock, a counting hasher, outbox reading."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from argon2 import PasswordHasher

from services.identity.passwords import Passwords
from tests.support.mailjobs import opened

STRONG = "correct horse battery staple 42"


class Clock:
    def __init__(self) -> None:
        self.value = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.value

    def advance(self, **kwargs: float) -> None:
        self.value += timedelta(**kwargs)


class CountingPasswords(Passwords):
    """The real hasher, counting verifies (so a test can see an unknown email costs one)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        super().__init__(hasher)
        self.verifies = 0

    async def verify(self, password_hash: str, password: str) -> bool:
        self.verifies += 1
        return await super().verify(password_hash, password)


def cheap_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def new_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@Example.COM"


async def outbox_events(pool: asyncpg.Pool, routing_key: str) -> list[dict[str, Any]]:
    """Envelopes written to the outbox with this routing key, with their exchange."""
    rows = await pool.fetch(
        "SELECT exchange, body FROM outbox WHERE routing_key = $1 ORDER BY seq",
        routing_key,
    )
    return [{"exchange": r["exchange"], **opened(orjson.loads(r["body"]))} for r in rows]
