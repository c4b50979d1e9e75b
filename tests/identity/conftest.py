"""Identity test fixtures: handler deps on the real schema, a settable clock, and a cheap
argon2 profile so tests don't spend seconds hashing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from services.identity.domain import SessionPolicy
from services.identity.handlers import Deps
from tests.identity.helpers import Clock, CountingPasswords, cheap_hasher


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def passwords() -> AsyncIterator[CountingPasswords]:
    hasher = CountingPasswords(cheap_hasher())
    yield hasher
    hasher.close()


@pytest.fixture
async def pool(pool_factory: Callable[[str], Any]) -> asyncpg.Pool:
    result: asyncpg.Pool = await pool_factory("identity")
    return result


@pytest.fixture
def deps(pool: asyncpg.Pool, passwords: CountingPasswords, clock: Clock) -> Deps:
    return Deps(
        pool=pool,
        passwords=passwords,
        sessions=SessionPolicy(idle=timedelta(minutes=120), absolute=timedelta(hours=168)),
        public_base="https://portal.example.com",
        site_name="portal.example.com",
        now=clock,
    )
