"""Shared fixtures: a fresh database and bus prefix per run, real SMTP, real services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from libs.common.db import create_pool, migrate
from tests.support import servers
from tests.support.env import TestEnv, new_test_env, provisioned
from tests.support.smtp import SmtpSink

ROOT = Path(__file__).resolve().parents[1]


def pytest_report_header(config: pytest.Config) -> str:
    # Chosen here, before any test: containers (when a Docker engine answers) are
    # started once for the run, and the header says which servers the run used.
    return servers.current().describe()


def pytest_unconfigure(config: pytest.Config) -> None:
    servers.stop()


@pytest.fixture(scope="session")
async def test_env() -> AsyncIterator[TestEnv]:
    async with provisioned(new_test_env()) as env:
        yield env


@pytest.fixture(scope="session")
async def migrated_schemas(test_env: TestEnv) -> TestEnv:
    """Every service's real migrations applied to the run's database."""
    for schema in ("identity", "portals", "invitations", "mailer", "gateway"):
        directory = ROOT / "services" / schema / "migrations"
        if directory.is_dir():
            await migrate(test_env.database_url_as(schema), schema, directory)
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
