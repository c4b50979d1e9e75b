"""Integration keys in identity: shown once, stored as a sha256 only, several live at
once, revoked at once, last use recorded (at most once a minute), bad input refused."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.identity.helpers import Clock

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def _create(client: Client, name: str, scopes: list[str]) -> dict[str, Any]:
    response = await client.post("/api-keys", json={"name": name, "scopes": scopes})
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def _verify(client: Client, key: str) -> tuple[int, dict[str, Any]]:
    response = await client.post("/api-keys/verify", json={"key": key})
    return response.status, dict(await response.json())


async def _last_used(client: Client, key_id: str) -> Any:
    listed = await (await client.get("/api-keys")).json()
    return next(item for item in listed["items"] if item["id"] == key_id)["last_used_at"]


async def test_a_key_is_shown_once_stored_hashed_and_verified(
    client: Client, pool: asyncpg.Pool
) -> None:
    created = await _create(client, "  CRM   sync ", ["invitations:read", "invitations:write"])
    key = created["key"]
    assert key.startswith("cpk_") and len(key) > 40
    assert created["name"] == "CRM sync"
    assert created["scopes"] == ["invitations:write", "invitations:read"]  # canonical order
    assert key.startswith(created["prefix"]) and len(created["prefix"]) < 12
    # Only the hash is stored: no column anywhere holds the key.
    stored = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", created["id"])
    assert stored["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in " ".join(str(value) for value in stored.values())
    listed = await (await client.get("/api-keys")).json()
    mine = [item for item in listed["items"] if item["id"] == created["id"]]
    assert len(mine) == 1 and "key" not in mine[0]
    status, verified = await _verify(client, key)
    assert status == 200
    assert verified["id"] == created["id"] and verified["scopes"] == created["scopes"]


async def test_two_keys_live_at_once_and_a_revoked_one_stops_at_once(client: Client) -> None:
    old = await _create(client, "old", ["portals:read"])
    new = await _create(client, "new", ["portals:read"])
    assert (await _verify(client, old["key"]))[0] == 200
    assert (await _verify(client, new["key"]))[0] == 200
    assert (await client.delete(f"/api-keys/{old['id']}")).status == 204
    status, body = await _verify(client, old["key"])
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert (await _verify(client, new["key"]))[0] == 200
    again = await client.delete(f"/api-keys/{old['id']}")
    assert again.status == 404
    assert (await client.delete("/api-keys/not-a-uuid")).status == 404
    listed = await (await client.get("/api-keys")).json()
    live = {item["id"] for item in listed["items"]}
    assert new["id"] in live and old["id"] not in live


@pytest.mark.parametrize("key", ["", "cpk_", "cpk_nope", "Bearer cpk_x", "x" * 200])
async def test_unknown_or_malformed_keys_get_the_same_answer(client: Client, key: str) -> None:
    status, body = await _verify(client, key)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")


async def test_last_use_is_recorded_at_most_once_a_minute(client: Client, clock: Clock) -> None:
    created = await _create(client, "poller", ["invitations:read"])
    assert created["last_used_at"] is None
    await _verify(client, created["key"])
    first = await _last_used(client, created["id"])
    assert first is not None
    clock.advance(seconds=30)
    await _verify(client, created["key"])
    assert await _last_used(client, created["id"]) == first
    clock.advance(seconds=61)
    await _verify(client, created["key"])
    assert await _last_used(client, created["id"]) > first


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "", "scopes": ["portals:read"]}, "invalid_key_name"),
        ({"name": "x" * 101, "scopes": ["portals:read"]}, "invalid_key_name"),
        ({"name": "k", "scopes": []}, "invalid_scopes"),
        ({"name": "k", "scopes": ["portals:read", "admin"]}, "invalid_scopes"),
    ],
)
async def test_bad_keys_are_refused_with_a_reason(
    client: Client, body: dict[str, Any], code: str
) -> None:
    response = await client.post("/api-keys", json=body)
    assert response.status == 422
    assert (await response.json())["error"]["code"] == code


async def test_the_same_form_sent_twice_makes_one_key(client: Client, pool: asyncpg.Pool) -> None:
    """A reload after Create Key sends the form again: the form's one-time id makes the
    second request a clear 409, never a second key nor the first key again."""
    request_id = f"form-{uuid.uuid4().hex}"
    body = {"name": "Reloaded", "scopes": ["portals:read"], "request_id": request_id}
    first = await client.post("/api-keys", json=body)
    assert first.status == 201
    again = await client.post("/api-keys", json=body)
    assert again.status == 409
    answer = await again.json()
    assert answer["error"]["code"] == "key_already_created"
    assert "key" not in answer and (await first.json())["key"] not in str(answer)
    count = await pool.fetchval("SELECT count(*) FROM api_keys WHERE request_id = $1", request_id)
    assert count == 1
    # Without an id (the API), each request is a key of its own.
    plain = {"name": "Plain", "scopes": ["portals:read"]}
    assert (await client.post("/api-keys", json=plain)).status == 201
    assert (await client.post("/api-keys", json=plain)).status == 201
