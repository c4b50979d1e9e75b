"""The cap on invitations one API key sends in any hour (INVITATIONS_REQUESTS_PER_KEY_HOUR):
a leaked key could mail every address it knows through single invites, several-portal
invites, Resend and 10,000-row batches; now, past the cap, 429 integration_rate_limited
(a batch's rows past it: rejected alone), nothing sent, and a person's work isn't capped."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.actor import ACTOR_HEADER, Actor, encode_actor
from tests.invitations.conftest import AppFactory, Clock, World

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


def _as(actor_type: str, name: str) -> dict[str, str]:
    actor = Actor(type=actor_type, id=str(uuid.uuid4()), name=name)  # type: ignore[arg-type]
    return {ACTOR_HEADER: encode_actor(actor)}


def _email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


async def _invite(client: Client, headers: dict[str, str], portal_id: str, **extra: Any) -> Any:
    body = {"portal_id": portal_id, "email": _email("cap"), **extra}
    return await client.post("/invitations", json=body, headers=headers)


async def _batch(
    client: Client, headers: dict[str, str], portal_id: str, rows: list[Any], **extra: Any
) -> list[dict[str, Any]]:
    body = {"portal_id": portal_id, "rows": rows, **extra}
    response = await client.post("/invitations/batch", json=body, headers=headers)
    assert response.status == 200, await response.text()
    results: list[dict[str, Any]] = (await response.json())["results"]
    return results


async def _sent(pool: asyncpg.Pool, emails: list[str]) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM invitations WHERE email_lower = ANY($1::text[])", emails
    )
    return count


async def test_a_key_past_its_hourly_cap_is_refused_and_sends_nothing(
    app_factory: AppFactory, world: World, clock: Clock
) -> None:
    client = await app_factory(invitations_requests_per_key_hour=3)
    key = _as("key", "CRM sync")
    portal = world.add_portal()
    request_key = f"k-{uuid.uuid4().hex}"
    first = await _invite(client, key, portal["id"], idempotency_key=request_key)
    assert first.status == 201
    made = (await first.json())["invitation"]
    resent = await client.post(f"/invitations/{made['id']}/resend", json={}, headers=key)
    assert resent.status == 200
    several = await client.post(
        "/invitations/group",
        json={"portal_ids": [portal["id"], world.add_portal()["id"]], "email": _email("g")},
        headers=key,
    )
    assert several.status == 201, await several.text()
    refused = await _invite(client, key, portal["id"])
    assert refused.status == 429, await refused.text()
    error = (await refused.json())["error"]
    assert error["code"] == "integration_rate_limited"
    assert "'CRM sync'" in error["message"] and "Nothing was sent" in error["message"]
    # Counted by the minute: the next fits once this minute has left the hour.
    retry_at = datetime.fromisoformat(error["retry_at"])
    assert retry_at == clock.now.replace(second=0, microsecond=0) + timedelta(hours=1)
    wait = math.ceil((retry_at - clock.now).total_seconds())
    assert refused.headers["Retry-After"] == str(wait)
    again = await client.post(f"/invitations/{made['id']}/resend", json={}, headers=key)
    assert again.status == 429
    # A retry of the first request (its idempotency key) sends nothing: answered as then.
    replay = await client.post(
        "/invitations",
        json={
            "portal_id": portal["id"],
            "email": made["email"],
            "idempotency_key": request_key,
        },
        headers=key,
    )
    assert replay.status == 201 and (await replay.json())["invitation"]["id"] == made["id"]
    # Another key, and a person at the screens, are not held back by this key's cap.
    assert (await _invite(client, _as("key", "Billing"), portal["id"])).status == 201
    assert (await _invite(client, _as("user", "ann@agency.example"), portal["id"])).status == 201
    clock.advance(hours=1, seconds=1)
    assert (await _invite(client, key, portal["id"])).status == 201


async def test_a_batch_sends_what_the_cap_leaves_and_rejects_the_rest_by_row(
    app_factory: AppFactory, world: World, pool: asyncpg.Pool
) -> None:
    client = await app_factory(invitations_requests_per_key_hour=5)
    key = _as("key", "Migration")
    portal = world.add_portal()
    emails = [_email("row") for _ in range(8)]
    rows = [{"email": email, "idempotency_key": f"r-{uuid.uuid4().hex}"} for email in emails]
    results = await _batch(client, key, portal["id"], rows[:2])
    assert [r["status"] for r in results] == ["created"] * 2
    # The whole file again: its first two rows are replays (not counted, nothing sent),
    # three more fit, the last three are refused alone with the reason and the time.
    results = await _batch(client, key, portal["id"], rows)
    assert [(r["status"], r.get("reason")) for r in results] == [("created", None)] * 5 + [
        ("rejected", "integration_rate_limited")
    ] * 3
    assert "INVITATIONS_REQUESTS_PER_KEY_HOUR" in results[-1]["message"]
    assert await _sent(pool, emails) == 5
    # A preview (dry_run) writes nothing and is not counted.
    results = await _batch(client, key, portal["id"], [{"email": _email("p")}], dry_run=True)
    assert [r["status"] for r in results] == ["created"]
    # Import Clients, a person's batch, is not capped by a key's count.
    person = _as("user", "ann@agency.example")
    results = await _batch(client, person, portal["id"], [{"email": _email("s")} for _ in range(7)])
    assert {r["status"] for r in results} == {"created"}


async def test_a_key_cap_of_zero_counts_nothing(
    app_factory: AppFactory, world: World, pool: asyncpg.Pool
) -> None:
    client = await app_factory(invitations_requests_per_key_hour=0)
    headers = _as("key", "Unbounded")
    portal = world.add_portal()
    for _ in range(3):
        assert (await _invite(client, headers, portal["id"])).status == 201
    counted = "SELECT coalesce(sum(requests), 0) FROM sender_counts WHERE sender LIKE 'key:%'"
    before = await pool.fetchval(counted)
    assert (await _invite(client, headers, portal["id"])).status == 201
    assert await pool.fetchval(counted) == before
