"""Shared fixtures: a fresh database and bus prefix per run, real SMTP, real services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from libs.common.db import create_pool, migrate
from tests.support.env import CONSUMERS, TestEnv, new_test_env
from tests.support.smtp import SmtpSink

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
async def test_env() -> AsyncIterator[TestEnv]:
    env = new_test_env()
    admin = await asyncpg.connect(env.admin_url)
    await admin.execute(f'CREATE DATABASE "{env.database_name}"')
    await admin.close()
    yield env
    await _drop_bus(env)
    admin = await asyncpg.connect(env.admin_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{env.database_name}" WITH (FORCE)')
    await admin.close()


async def _drop_bus(env: TestEnv) -> None:
    connection = await aio_pika.connect(env.amqp_url)
    try:
        channel = await connection.channel()
        names = list(CONSUMERS) + [f"probe{i}" for i in range(4)]
        for name in names:
            for queue in (f"{env.bus_prefix}.{name}", f"{env.bus_prefix}.{name}.dead"):
                await channel.queue_delete(queue)
        for kind in ("events", "mail", "dlx"):
            await channel.exchange_delete(f"{env.bus_prefix}.{kind}")
    finally:
        await connection.close()


@pytest.fixture(scope="session")
async def migrated_schemas(test_env: TestEnv) -> TestEnv:
    """Every service's real migrations applied to the run's database."""
    for schema in ("identity", "portals", "invitations", "mailer"):
        directory = ROOT / "services" / schema / "migrations"
        if directory.is_dir():
            await migrate(test_env.database_url, schema, directory)
    return test_env


@pytest.fixture
def pool_factory(migrated_schemas: TestEnv) -> Iterator[object]:
    """``await pool_factory("identity")`` → an asyncpg pool on that schema, closed after."""
    pools: list[asyncpg.Pool] = []

    async def make(schema: str) -> asyncpg.Pool:
        pool = await create_pool(migrated_schemas.database_url, schema, max_size=20)
        pools.append(pool)
        return pool

    yield make
    # Pools are closed by the event loop teardown in reverse order of creation.
    for pool in reversed(pools):
        pool.terminate()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()
