"""Password hashing with argon2id, off the event loop in a bounded thread pool with a
bounded wait queue: beyond it, or past the longest wait, the answer is 503 at once."""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from prometheus_client import Counter

from libs.common.errors import RateLimited
from libs.common.passwords import normalise_password

from .settings import default_hash_concurrency

T = TypeVar("T")

HASHES_REFUSED = Counter(
    "clientpress_identity_hashes_refused_total",
    "Password hashes refused with 503: the queue was full, or the hash waited too long",
    ["reason"],
)


def default_hasher() -> PasswordHasher:
    # RFC 9106 "low memory" profile: argon2id, t=3, m=64 MiB, p=4. Above OWASP's minimum
    # (argon2id, m=19 MiB, t=2, p=1) while staying near 0.1 s per hash on a small host.
    return PasswordHasher.from_parameters(profiles.RFC_9106_LOW_MEMORY)


class HashingBusy(RateLimited):
    """Too many hashes already waiting: 503 with Retry-After (a RateLimited, so the error
    middleware sends the header), because the server is busy, not the caller too quick."""

    status = 503
    code = "busy"


class _WaitedTooLong(Exception):
    pass


class Passwords:
    """argon2 is CPU- and memory-heavy: at most ``workers`` hashes at a time
    (``IDENTITY_HASH_CONCURRENCY``), at most ``queue`` more waiting (``IDENTITY_HASH_QUEUE``),
    and none started after waiting ``max_wait`` seconds (``IDENTITY_HASH_MAX_WAIT_SECONDS``):
    by then the gateway has given up on the request, so the hash would be work for nobody."""

    def __init__(
        self,
        hasher: PasswordHasher | None = None,
        workers: int | None = None,
        *,
        queue: int = 32,
        max_wait: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hasher = hasher or default_hasher()
        self.workers = workers or default_hash_concurrency()
        self.queue = queue
        self.max_wait = max_wait
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="argon2")
        # Hashes handed to the pool and not yet finished (running + waiting), counted on
        # the event loop; released when the pool is done with one, not when its caller
        # stops waiting, so a cancelled request doesn't free a slot still in use.
        self._admitted = 0
        self._dummy_hash: str | None = None

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.max_wait / 2))

    async def hash(self, password: str) -> str:
        return await self._run(self.hasher.hash, normalise_password(password))

    async def verify(self, password_hash: str, password: str) -> bool:
        return await self._run(partial(self._verify, password_hash, password))

    async def _run(self, work: Callable[..., T], *args: object) -> T:
        if self._admitted >= self.workers + self.queue:
            HASHES_REFUSED.labels("queue_full").inc()
            raise HashingBusy(
                "Too many sign-ins at once. Please try again in a moment.",
                retry_after=self.retry_after,
            )
        loop = asyncio.get_running_loop()
        enqueued = self._clock()

        def job() -> T:
            if self._clock() - enqueued > self.max_wait:
                raise _WaitedTooLong
            return work(*args)

        self._admitted += 1
        future = self._pool.submit(job)
        future.add_done_callback(lambda _: self._release_from_thread(loop))
        try:
            return await asyncio.wrap_future(future)
        except _WaitedTooLong:
            HASHES_REFUSED.labels("waited_too_long").inc()
            raise HashingBusy(
                "Too many sign-ins at once. Please try again in a moment.",
                retry_after=self.retry_after,
            ) from None

    def _release_from_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        # RuntimeError: the loop has closed (shutting down), nothing left to count.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self._admitted -= 1

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
        """The normalised password, and, if the person typed it otherwise, the password as
        typed: a hash made before passwords were normalised. Either way the cost depends
        on what was typed alone, never on the account."""
        normal = normalise_password(password)
        if self._matches(password_hash, normal):
            return True
        return normal != password and self._matches(password_hash, password)

    def _matches(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
