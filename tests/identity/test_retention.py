"""What identity forgets (IDENTITY_RETENTION_DAYS): ended sessions and spent or expired
reset links go some time after they ended, in batches; live ones stay."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from libs.common import retention
from services.identity import handlers
from services.identity.domain import ActivityEntry
from services.identity.handlers import Deps
from services.identity.settings import IdentitySettings
from tests.identity.helpers import STRONG, Clock, new_email, outbox_events

pytestmark = pytest.mark.integration

MONTH = timedelta(days=30)


async def _reset_token(deps: Deps, pool: asyncpg.Pool, address: str) -> str:
    await handlers.request_password_reset(deps, address)
    jobs = [j for j in await outbox_events(pool, "mail.requested") if j["data"]["to"] == address]
    url: str = jobs[-1]["data"]["context"]["reset_url"]
    return parse_qs(urlsplit(url).query)["token"][0]


async def _count(pool: asyncpg.Pool, table: str, user_id: object) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", user_id))


async def test_ended_sessions_and_spent_reset_links_go_after_the_retention(
    deps: Deps, pool: asyncpg.Pool, clock: Clock
) -> None:
    user = await handlers.create_user(deps, new_email("forget"), STRONG, "client")
    logged_out = await handlers.login(deps, user.email, STRONG)
    await handlers.logout(deps, logged_out.token)
    await handlers.login(deps, user.email, STRONG)  # left idle, then past its limit
    await handlers.confirm_reset(deps, await _reset_token(deps, pool, user.email), STRONG + "!")
    await _reset_token(deps, pool, user.email)  # never used: expires in an hour
    assert await _count(pool, "sessions", user.id) == 2
    assert await _count(pool, "password_resets", user.id) == 2

    # Not yet a month since they ended: kept (someone may still ask about them).
    clock.advance(days=29)
    live = await handlers.login(deps, user.email, STRONG + "!")
    await handlers.prune_ended(deps, MONTH)
    assert await _count(pool, "sessions", user.id) == 3
    assert await _count(pool, "password_resets", user.id) == 2

    clock.advance(days=2)
    fresh_reset = await _reset_token(deps, pool, user.email)
    pruned = await handlers.prune_ended(deps, MONTH)
    assert pruned["sessions"] >= 2 and pruned["password_resets"] >= 2  # others' too
    assert await _count(pool, "sessions", user.id) == 1
    assert await _count(pool, "password_resets", user.id) == 1
    # What is still alive works as before.
    assert (await handlers.validate_reset(deps, fresh_reset)) == user.email
    live_again = await pool.fetchval("SELECT count(*) FROM sessions WHERE id = $1", live.session.id)
    assert live_again == 1


async def test_a_prune_deletes_in_batches_until_none_is_left(
    deps: Deps, pool: asyncpg.Pool, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "PRUNE_BATCH", 3)
    user = await handlers.create_user(deps, new_email("batches"), STRONG, "client")
    for _ in range(7):
        await handlers.logout(deps, (await handlers.login(deps, user.email, STRONG)).token)
    clock.advance(days=31)
    before = retention.ROWS_PRUNED.labels("sessions")._value.get()
    # Two replicas at once: each row goes once, neither waits on the other's.
    both = await asyncio.gather(*(handlers.prune_ended(deps, MONTH) for _ in range(2)))
    gone = sum(p["sessions"] for p in both)
    assert gone >= 7
    assert await _count(pool, "sessions", user.id) == 0
    assert retention.ROWS_PRUNED.labels("sessions")._value.get() - before == gone


async def test_the_activity_log_is_kept_unless_an_operator_sets_its_retention(
    deps: Deps, pool: asyncpg.Pool, clock: Clock
) -> None:
    actor = str(uuid.uuid4())

    def entry(when: datetime) -> ActivityEntry:
        return ActivityEntry(
            id=uuid.uuid4(),
            occurred_at=when,
            action="portal.created",
            actor_type="user",
            actor_id=actor,
            actor_name="dana@agency.example",
            object_type="portal",
            object_id=str(uuid.uuid4()),
            object_label="Acme",
        )

    old, recent = entry(clock() - timedelta(days=400)), entry(clock() - timedelta(days=10))
    async with pool.acquire() as conn:
        for item in (old, recent):
            assert await handlers.record_activity(deps.within(conn), item)

    async def kept() -> set[uuid.UUID]:
        rows = await pool.fetch("SELECT id FROM activity WHERE actor_id = $1", actor)
        return {row["id"] for row in rows}

    # The default: the audit log stays.
    assert "activity" not in await handlers.prune_ended(deps, MONTH)
    assert await kept() == {old.id, recent.id}
    assert IdentitySettings().activity_retention is None
    year = IdentitySettings(identity_activity_retention_days=365).activity_retention
    assert year == timedelta(days=365)
    assert (await handlers.prune_ended(deps, MONTH, year))["activity"] >= 1
    assert await kept() == {recent.id}
