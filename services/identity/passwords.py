"""Password hashing with argon2id, off the event loop in a bounded thread pool."""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .settings import default_hash_concurrency


def default_hasher() -> PasswordHasher:
    # RFC 9106 "low memory" profile: argon2id, t=3, m=64 MiB, p=4. Above OWASP's minimum
    # (argon2id, m=19 MiB, t=2, p=1) while staying near 0.1 s per hash on a small host.
    return PasswordHasher.from_parameters(profiles.RFC_9106_LOW_MEMORY)


class Passwords:
    """argon2 is CPU- and memory-heavy: at most ``workers`` hashes at a time
    (``IDENTITY_HASH_CONCURRENCY``), so a burst of logins queues here instead of stalling
    every request on the loop or taking 64 MiB per login at once."""

    def __init__(self, hasher: PasswordHasher | None = None, workers: int | None = None) -> None:
        self.hasher = hasher or default_hasher()
        self._pool = ThreadPoolExecutor(
            max_workers=workers or default_hash_concurrency(), thread_name_prefix="argon2"
        )
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, partial(self._verify, password_hash, password)
        )

    async def prepare(self) -> None:
        """Make the dummy hash at start, so even the first unknown-email login costs one
        verify and nothing more."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(secrets.token_urlsafe(16))

    async def verify_dummy(self, password: str) -> None:
        """Spend the same work as a real check, for an account that doesn't exist, so the
        answer's timing doesn't tell whether an email is registered."""
        await self.prepare()
        assert self._dummy_hash is not None
        await self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
