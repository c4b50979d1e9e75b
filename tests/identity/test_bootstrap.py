"""Admin bootstrap, on its own database so "no administrator yet" really holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from structlog.testing import capture_logs

from libs.common.db import create_pool, migrate
from libs.common.sealing import DEVELOPMENT_KEY, Sealer
from services.identity import handlers
from services.identity.app import create_app
from services.identity.domain import SessionPolicy
from services.identity.handlers import Deps
from services.identity.settings import IdentitySettings
from tests.identity.helpers import STRONG, Clock, CountingPasswords, outbox_events
from tests.support.env import TestEnv

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "identity" / "migrations"


@pytest.fixture
async def fresh_database(test_env: TestEnv) -> AsyncIterator[str]:
    name = f"{test_env.database_name}_boot"
    url = urlunsplit(urlsplit(test_env.database_url)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(test_env.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await migrate(url, "identity", MIGRATIONS)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def fresh_pool(fresh_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(fresh_database, "identity", max_size=20)
    yield pool
    await pool.close()


@pytest.fixture
def boot_deps(fresh_pool: asyncpg.Pool, passwords: CountingPasswords, clock: Clock) -> Deps:
    return Deps(
        db=fresh_pool,
        passwords=passwords,
        sessions=SessionPolicy(idle=timedelta(minutes=120), absolute=timedelta(hours=168)),
        public_base="http://localhost:8080",
        site_name="localhost",
        sealer=Sealer(DEVELOPMENT_KEY),
        clock=clock,
    )


async def test_weak_admin_password_is_refused_and_named(boot_deps: Deps) -> None:
    with capture_logs() as logs:
        result = await handlers.bootstrap_admin(boot_deps, "admin@example.com", "password1234")
    assert result is None
    assert await boot_deps.db.fetchval("SELECT count(*) FROM users") == 0
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["variable"] == "ADMIN_PASSWORD"
    assert "too common" in errors[0]["problem"]
    assert "password1234" not in str(logs)


async def test_concurrent_starts_create_one_administrator(boot_deps: Deps) -> None:
    results = await asyncio.gather(
        *(handlers.bootstrap_admin(boot_deps, " Admin@Example.COM ", STRONG) for _ in range(16))
    )
    made = [r for r in results if r is not None]
    assert len(made) == 1 and made[0].role == "administrator"
    assert made[0].email == "Admin@example.com"
    rows = await boot_deps.db.fetch("SELECT role FROM users")
    assert [r["role"] for r in rows] == ["administrator"]
    assert len(await outbox_events(boot_deps.db, "identity.user.created")) == 1
    issued = await handlers.login(boot_deps, "admin@example.com", STRONG)
    assert issued.user.role == "administrator"
    # A later start with other credentials leaves the existing administrator alone.
    assert await handlers.bootstrap_admin(boot_deps, "other@example.com", STRONG) is None
    assert await boot_deps.db.fetchval("SELECT count(*) FROM users") == 1


async def test_admin_email_used_by_a_client_is_reported(boot_deps: Deps) -> None:
    await handlers.create_user(boot_deps, "taken@example.com", STRONG, "client")
    with capture_logs() as logs:
        assert await handlers.bootstrap_admin(boot_deps, "taken@example.com", STRONG) is None
    assert [e["variable"] for e in logs if e["log_level"] == "error"] == ["ADMIN_EMAIL"]


async def test_app_start_bootstraps_the_administrator(
    fresh_database: str, test_env: TestEnv
) -> None:
    settings = IdentitySettings(
        database_url=fresh_database,
        amqp_url=test_env.amqp_url,
        bus_prefix=test_env.bus_prefix,
        admin_email="boss@example.com",
        admin_password=SecretStr(STRONG),
        **test_env.keys.settings("identity"),
    )
    proof = test_env.keys.client_middleware("gateway", "identity")
    async with TestClient(TestServer(create_app(settings)), middlewares=(proof,)) as client:
        response = await client.post(
            "/sessions", json={"email": "boss@example.com", "password": STRONG}
        )
        assert response.status == 201
        assert (await response.json())["user"]["role"] == "administrator"
