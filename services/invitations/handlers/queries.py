"""Reads and the Access & Login setting."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from libs.common.errors import NotFound

from .. import domain
from .. import repository as repo
from .base import Deps, Row, log


async def get(pool: asyncpg.Pool, invitation_id: uuid.UUID) -> Row:
    async with pool.acquire() as conn:
        row = await repo.get(conn, invitation_id)
    if row is None:
        raise NotFound("There is no such invitation.", code="invitation_not_found")
    return row


async def list_page(
    pool: asyncpg.Pool,
    deps: Deps,
    *,
    status: str | None,
    portal_id: uuid.UUID | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> tuple[list[Row], bool]:
    """A page and whether more follow."""
    async with pool.acquire() as conn:
        rows = await repo.page(
            conn,
            status=status,
            portal_id=portal_id,
            after=after,
            limit=limit + 1,
            now=deps.clock(),
        )
    return rows[:limit], len(rows) > limit


async def get_expiry_days(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return await repo.expiry_days(conn)


async def set_expiry_days(pool: asyncpg.Pool, days: int) -> int:
    domain.check_expiry_days(days)
    async with pool.acquire() as conn:
        await repo.set_expiry_days(conn, days)
    log.info("invitation_expiry_changed", days=days)
    return days
