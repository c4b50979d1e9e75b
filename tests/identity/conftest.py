"""Identity test fixtures: handler deps on the real schema, a settable clock, a cheap
argon2 profile so tests don't spend seconds hashing, and the app over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from libs.common.sealing import DEVELOPMENT_KEY, Sealer
from services.identity.app import create_app
from services.identity.domain import SessionPolicy
from services.identity.handlers import Deps
from services.identity.settings import IdentitySettings
from tests.identity.helpers import Clock, CountingPasswords, cheap_hasher
from tests.support.env import TestEnv


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
        db=pool,
        passwords=passwords,
        sessions=SessionPolicy(idle=timedelta(minutes=120), absolute=timedelta(hours=168)),
        public_base="https://portal.example.com",
        site_name="portal.example.com",
        sealer=Sealer(DEVELOPMENT_KEY),
        clock=clock,
    )


@pytest.fixture
async def client(
    migrated_schemas: TestEnv, clock: Clock, passwords: CountingPasswords
) -> AsyncIterator[TestClient[Any, Any]]:
    """The identity app over HTTP, on the run's schema, called with the gateway's proof."""
    settings = IdentitySettings(
        database_url=migrated_schemas.database_url,
        amqp_url=migrated_schemas.amqp_url,
        bus_prefix=migrated_schemas.bus_prefix,
        public_url="https://portal.example.com/",
        admin_email=None,
        admin_password=None,
        **migrated_schemas.keys.settings("identity"),
    )
    app = create_app(settings, clock=clock, passwords=passwords)
    proof = migrated_schemas.keys.client_middleware("gateway", "identity")
    async with TestClient(TestServer(app), middlewares=(proof,)) as test_client:
        yield test_client
