"""The shared mechanics of use cases (libs/common/db.py, bus.py): ``transaction`` and
``connection`` on the pool or on a connection, ``Deps.within`` and ``in_inbox``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import FrozenInstanceError, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.common.bus import in_inbox
from libs.common.db import (
    UseCaseDeps,
    atomic,
    connection,
    create_pool,
    migrate,
    transaction,
    utcnow,
)
from tests.support.env import TestEnv

pytestmark = pytest.mark.integration


class Boom(Exception):
    pass


@pytest.fixture
async def pool(test_env: TestEnv, tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    schema = f"probe_{uuid.uuid4().hex[:8]}"
    await migrate(test_env.database_url, schema, tmp_path)
    pool = await create_pool(test_env.database_url, schema, min_size=1, max_size=2)
    await pool.execute("CREATE TABLE probe (n int)")
    try:
        yield pool
    finally:
        await pool.close()


async def count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM probe"))


async def test_a_transaction_on_the_pool_commits_or_rolls_back(pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        assert conn.is_in_transaction()
        await conn.execute("INSERT INTO probe VALUES (1)")
    assert await count(pool) == 1
    with pytest.raises(Boom):
        async with transaction(pool) as conn:
            await conn.execute("INSERT INTO probe VALUES (2)")
            raise Boom
    assert await count(pool) == 1


async def test_a_transaction_on_a_connection_is_a_savepoint_in_the_callers(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as outer:
        async with outer.transaction():
            async with transaction(outer) as conn:
                assert conn is outer
                await conn.execute("INSERT INTO probe VALUES (1)")
            with pytest.raises(Boom):
                async with transaction(outer) as conn:
                    await conn.execute("INSERT INTO probe VALUES (2)")
                    raise Boom
            # The savepoint's rollback left the caller's transaction going, and nothing is
            # committed before the caller's transaction is.
            assert outer.is_in_transaction()
            assert await count(pool) == 0
        assert await count(pool) == 1
        # The caller's rollback takes the nested work with it.
        with pytest.raises(Boom):
            async with outer.transaction():
                async with transaction(outer) as conn:
                    await conn.execute("INSERT INTO probe VALUES (3)")
                raise Boom
        assert await count(pool) == 1


async def test_atomic_joins_the_callers_transaction_without_a_savepoint(
    pool: asyncpg.Pool,
) -> None:
    async with atomic(pool) as conn:
        assert conn.is_in_transaction()
        await conn.execute("INSERT INTO probe VALUES (1)")
    assert await count(pool) == 1
    async with pool.acquire() as outer:
        # Inside the caller's transaction: its work is the caller's, all or nothing.
        with pytest.raises(Boom):
            async with outer.transaction():
                async with atomic(outer) as conn:
                    assert conn is outer
                    await conn.execute("INSERT INTO probe VALUES (2)")
                raise Boom
        assert await count(pool) == 1
        # Given a connection outside any transaction, it opens one of its own.
        with pytest.raises(Boom):
            async with atomic(outer) as conn:
                assert conn.is_in_transaction()
                await conn.execute("INSERT INTO probe VALUES (3)")
                raise Boom
        assert await count(pool) == 1 and not outer.is_in_transaction()


async def test_connection_borrows_from_the_pool_or_passes_the_connection_on(
    pool: asyncpg.Pool,
) -> None:
    async with connection(pool) as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT 1") == 1
    async with pool.acquire() as given, connection(given) as conn:
        assert conn is given


@dataclass(frozen=True)
class ProbeDeps(UseCaseDeps):
    name: str


def test_deps_within_replaces_only_the_database() -> None:
    clock = lambda: datetime(2030, 1, 1, tzinfo=UTC)  # noqa: E731
    pool = object()
    conn = object()
    deps = ProbeDeps("probe", db=pool, clock=clock)  # type: ignore[arg-type]
    inner = deps.within(conn)  # type: ignore[arg-type]
    assert isinstance(inner, ProbeDeps)
    assert (inner.db, inner.clock, inner.name) == (conn, clock, "probe")
    assert deps.db is pool
    with pytest.raises(FrozenInstanceError):
        inner.db = pool  # type: ignore[misc]
    assert ProbeDeps("x", db=pool).clock is utcnow  # type: ignore[arg-type]


async def test_in_inbox_runs_each_handler_on_the_inbox_connection() -> None:
    pool, conn = object(), object()
    deps = ProbeDeps("probe", db=pool)  # type: ignore[arg-type]
    seen: list[tuple[object, str]] = []

    async def handler(given: ProbeDeps, envelope: Any, data: Any) -> None:
        seen.append((given.db, given.name))

    handlers = in_inbox(lambda: deps, {"probe.happened": handler})
    await handlers["probe.happened"](conn, None, None)  # type: ignore[arg-type]
    assert seen == [(conn, "probe")]
    assert deps.db is pool
