"""Roles: Administrator, Staff and Client; a role change and a re-enable are announced;
the last active Administrator can't be disabled or demoted, even by two requests racing
(each demoting the other), on a database of its own where the test knows every admin."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from libs.common.db import create_pool, migrate
from libs.common.errors import Conflict, InvalidInput, Unauthorized
from services.identity import handlers
from services.identity.handlers import Deps
from tests.identity.helpers import STRONG, new_email, outbox_events
from tests.support.env import TestEnv

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "identity" / "migrations"


@pytest.fixture
async def lonely(deps: Deps, migrated_schemas: TestEnv) -> AsyncIterator[Deps]:
    """Deps on a database of its own: only this test's users exist in it."""
    name = f"{migrated_schemas.database_name}_roles_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(migrated_schemas.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = migrated_schemas.database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        await migrate(url, "identity", MIGRATIONS)
        pool = await create_pool(url, "identity", max_size=5)
        try:
            yield replace(deps, db=pool)
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_staff_is_a_role_and_a_change_is_announced(deps: Deps) -> None:
    user = await handlers.create_user(deps, new_email("staff"), STRONG, "staff")
    assert user.role == "staff"
    changed = await handlers.set_role(deps, user.id, "administrator")
    assert changed.role == "administrator"
    again = await handlers.set_role(deps, user.id, "administrator")  # nothing to do
    assert again.role == "administrator"
    events = [
        e
        for e in await outbox_events(deps.db, "identity.user.role_changed")
        if e["data"]["user_id"] == str(user.id)
    ]
    assert [(e["data"]["previous_role"], e["data"]["role"]) for e in events] == [
        ("staff", "administrator")
    ]
    with pytest.raises(InvalidInput):
        await handlers.set_role(deps, user.id, "owner")  # type: ignore[arg-type]


async def test_a_disabled_user_can_be_enabled_and_log_in_again(deps: Deps) -> None:
    email = new_email("back")
    user = await handlers.create_user(deps, email, STRONG, "client")
    await handlers.disable_user(deps, user.id)
    with pytest.raises(Unauthorized):
        await handlers.login(deps, email, STRONG)
    enabled = await handlers.enable_user(deps, user.id)
    assert enabled.disabled is False
    issued = await handlers.login(deps, email, STRONG)
    assert issued.user.id == user.id
    assert (await handlers.enable_user(deps, user.id)).disabled is False  # idempotent
    events = [
        e
        for e in await outbox_events(deps.db, "identity.user.enabled")
        if e["data"]["user_id"] == str(user.id)
    ]
    assert len(events) == 1


async def test_the_last_active_administrator_stays_one(lonely: Deps) -> None:
    first = await handlers.create_user(lonely, new_email("a1"), STRONG, "administrator")
    with pytest.raises(Conflict) as demoted:
        await handlers.set_role(lonely, first.id, "staff")
    assert demoted.value.code == "last_administrator"
    with pytest.raises(Conflict) as erased:
        await handlers.erase_user(lonely, first.id)
    assert erased.value.code == "last_administrator"
    assert "erase the last active Administrator" in erased.value.message
    assert "last active Administrator" in demoted.value.message
    with pytest.raises(Conflict):
        await handlers.disable_user(lonely, first.id)
    # A disabled administrator doesn't count as the one that remains.
    second = await handlers.create_user(lonely, new_email("a2"), STRONG, "administrator")
    await handlers.disable_user(lonely, second.id)
    with pytest.raises(Conflict):
        await handlers.set_role(lonely, first.id, "client")
    await handlers.enable_user(lonely, second.id)
    assert (await handlers.set_role(lonely, first.id, "staff")).role == "staff"
    with pytest.raises(Conflict):
        await handlers.disable_user(lonely, second.id)


async def test_two_racing_demotions_leave_one_administrator(lonely: Deps) -> None:
    for _ in range(5):
        a = await handlers.create_user(lonely, new_email("ra"), STRONG, "administrator")
        b = await handlers.create_user(lonely, new_email("rb"), STRONG, "administrator")
        outcomes = await asyncio.gather(
            handlers.set_role(lonely, a.id, "staff"),
            handlers.set_role(lonely, b.id, "staff"),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, Conflict)]
        assert len(refused) == 1, outcomes
        async with lonely.db.acquire() as conn:
            active = await conn.fetchval(
                "SELECT count(*) FROM users WHERE role = 'administrator' AND NOT disabled"
            )
        assert active == 1
        async with lonely.db.acquire() as conn:  # a clean slate for the next round
            await conn.execute("UPDATE users SET role = 'staff'")
