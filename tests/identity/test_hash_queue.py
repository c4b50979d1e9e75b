"""The hash queue's bound: a flood of logins gets quick 503s with Retry-After beyond
``workers + queue``, the admitted ones succeed, and a hash that waited past the longest
wait is never started."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from services.identity.app import create_app
from services.identity.passwords import HashingBusy, Passwords
from services.identity.settings import IdentitySettings
from tests.identity.helpers import STRONG, new_email
from tests.support.env import TestEnv

Client = TestClient[Any, Any]


class GatedHasher(PasswordHasher):
    """Real (cheap) argon2 whose verify waits until the test opens the gate, so the
    admitted hashes are certainly still busy while the flood arrives."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8192, parallelism=1)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.verifies = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verifies += 1
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().verify(hash, password)


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def gated() -> AsyncIterator[tuple[GatedHasher, Passwords]]:
    hasher = GatedHasher()
    passwords = Passwords(hasher, workers=1, queue=2, max_wait=60)
    yield hasher, passwords
    hasher.gate.set()
    passwords.close()


@pytest.mark.integration
async def test_a_flood_of_logins_beyond_the_queue_gets_quick_503s(
    migrated_schemas: TestEnv, gated: tuple[GatedHasher, Passwords]
) -> None:
    hasher, passwords = gated
    settings = IdentitySettings(
        database_url=migrated_schemas.database_url,
        amqp_url=migrated_schemas.amqp_url,
        bus_prefix=migrated_schemas.bus_prefix,
        admin_email=None,
        admin_password=None,
        **migrated_schemas.keys.settings("identity"),
    )
    proof = migrated_schemas.keys.client_middleware("gateway", "identity")
    app = create_app(settings, passwords=passwords)
    async with TestClient(TestServer(app), middlewares=(proof,)) as client:
        email = new_email("flood")
        created = await client.post("/users", json={"email": email, "password": STRONG})
        assert created.status == 201, await created.text()

        async def log_in() -> tuple[int, str | None, Any]:
            response = await client.post("/sessions", json={"email": email, "password": STRONG})
            return response.status, response.headers.get("Retry-After"), await response.json()

        admitted = passwords.workers + passwords.queue  # 1 running + 2 waiting
        flood = [asyncio.create_task(log_in()) for _ in range(admitted + 6)]
        # The gate is shut: the admitted three can't finish, so every other one must
        # come back by itself, without a hash.
        refused: set[asyncio.Task[tuple[int, str | None, Any]]] = set()
        pending = set(flood)
        while len(refused) < 6:
            done, pending = await asyncio.wait(pending, timeout=30, return_when="FIRST_COMPLETED")
            assert done, "the refused logins did not come back while the queue was full"
            refused |= done
        hasher.gate.set()
        await asyncio.gather(*pending)

    outcomes = [task.result() for task in flood]
    answered = [o for o in outcomes if o[0] == 503]
    assert len(answered) == 6 and all(t in refused for t in flood if t.result()[0] == 503)
    for _, retry_after, body in answered:
        assert retry_after is not None and int(retry_after) > 0
        assert body["error"]["code"] == "busy"
    assert [o[0] for o in outcomes].count(201) == admitted
    assert hasher.verifies == admitted  # nobody else's password was hashed


async def test_a_hash_that_waited_too_long_is_not_started() -> None:
    hasher = GatedHasher()
    ticks = Ticks()
    passwords = Passwords(hasher, workers=1, queue=4, max_wait=5, clock=ticks)
    try:
        stored = hasher.hash(STRONG)
        first = asyncio.create_task(passwords.verify(stored, STRONG))
        assert await asyncio.to_thread(hasher.entered.wait, 30)
        late = asyncio.create_task(passwords.verify(stored, STRONG))
        await asyncio.sleep(0)  # handed to the pool, behind the first
        ticks.now += 6  # the caller's deadline has long passed when a worker frees up
        hasher.gate.set()
        assert await first is True
        with pytest.raises(HashingBusy) as refused:
            await late
        assert refused.value.status == 503 and refused.value.retry_after > 0
        assert hasher.verifies == 1
    finally:
        hasher.gate.set()
        passwords.close()
