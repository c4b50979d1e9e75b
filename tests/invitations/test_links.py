"""Issue 20, the links half, on the real database with the real migrations: links that no
longer work say what happened, Email me a new link, the reason of every resend, Resend
refused for a portal that isn't Active, and the caps on new links."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.events import InvitationRequested, make_event
from services.invitations import domain
from services.invitations import repository as repo
from services.invitations.api import DEPS
from services.invitations.clients import PortalInfo
from services.invitations.handlers import Deps, serve_new_link_requests
from tests.invitations.conftest import (
    AppFactory,
    Clock,
    World,
    last_token,
    outbox_events,
    requested_handler,
)

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


def new_email() -> str:
    return f"links-{uuid.uuid4().hex[:10]}@example.com"


async def invite(client: Client, portal: dict[str, Any], email: str, **extra: Any) -> str:
    response = await client.post(
        "/invitations", json={"portal_id": portal["id"], "email": email, **extra}
    )
    assert response.status in (200, 201), await response.text()
    return str((await response.json())["invitation"]["id"])


async def validate(client: Client, token: str) -> tuple[int, dict[str, Any]]:
    response = await client.get("/invitations/validate", params={"token": token})
    return response.status, await response.json()


async def resend(client: Client, inv_id: str, **body: str) -> Any:
    return await client.post(f"/invitations/{inv_id}/resend", json=body or None)


async def mails(pool: asyncpg.Pool, inv_id: str) -> list[dict[str, Any]]:
    return [e["data"] for t, e in await outbox_events(pool, inv_id) if t == "mail.requested"]


async def events_of(pool: asyncpg.Pool, inv_id: str, event_type: str) -> list[dict[str, Any]]:
    return [e["data"] for t, e in await outbox_events(pool, inv_id) if t == event_type]


async def ask_new_link(client: Client, pool: asyncpg.Pool, token: str) -> dict[str, Any]:
    """POST /invitations/new-link, then wait until the request is served (the running
    app's worker, woken by the request, or this call: whichever takes it first)."""
    response = await client.post("/invitations/new-link", json={"token": token})
    assert response.status == 202
    answer: dict[str, Any] = await response.json()
    token_hash = domain.hash_token(token)
    deps = client.app[DEPS]
    for _ in range(200):
        await serve_new_link_requests(deps)
        waiting = await pool.fetchval(
            "SELECT count(*) FROM link_requests WHERE token_hash = $1", token_hash
        )
        if not waiting:
            return answer
        await asyncio.sleep(0.02)  # the app's worker holds it: it commits in a moment
    raise AssertionError("the new-link request was never served")


async def archive_in_replica(pool: asyncpg.Pool, portal: dict[str, Any]) -> None:
    """As portal.updated would: the replica learns the portal is Archived."""
    portal["status"] = "archived"
    portal["revision"] += 1
    async with pool.acquire() as conn:
        await repo.upsert_portal(conn, PortalInfo.from_json(portal))


# --- what a link says -----------------------------------------------------------------
async def test_an_earlier_link_says_replaced_then_revoked(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    inv_id = await invite(client, world.add_portal(), new_email())
    first = await last_token(pool, inv_id)
    assert (await resend(client, inv_id)).status == 200
    second = await last_token(pool, inv_id)

    status, body = await validate(client, first)
    assert status == 410 and body["error"]["code"] == "invitation_replaced"
    assert "copied" not in body["error"]["message"]
    response = await client.post("/invitations/reserve", json={"token": first})
    assert response.status == 410
    assert (await response.json())["error"]["code"] == "invitation_replaced"
    assert (await validate(client, second))[0] == 200  # only the latest link works

    assert (await client.post(f"/invitations/{inv_id}/revoke")).status == 200
    for token in (first, second):
        status, body = await validate(client, token)
        assert status == 410 and body["error"]["code"] == "invitation_revoked"
    status, body = await validate(client, "never-one-of-ours")
    assert status == 404 and body["error"]["code"] == "invitation_invalid"


async def test_an_earlier_link_of_an_accepted_invitation_says_used(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    inv_id = await invite(client, world.add_portal(), new_email())
    first = await last_token(pool, inv_id)
    await resend(client, inv_id)
    second = await last_token(pool, inv_id)
    reserved = await client.post("/invitations/reserve", json={"token": second})
    claim = (await reserved.json())["claim"]
    accepted = await client.post(
        "/invitations/accept",
        json={"token": second, "claim": claim, "user_id": str(uuid.uuid4())},
    )
    assert accepted.status == 200
    status, body = await validate(client, first)
    assert status == 409 and body["error"]["code"] == "invitation_used"


async def test_an_expired_link_says_when_it_expired(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    inv_id = await invite(client, world.add_portal(), new_email())
    token = await last_token(pool, inv_id)
    expires_at = (await (await client.get(f"/invitations/{inv_id}")).json())["expires_at"]
    clock.advance(days=20)
    status, body = await validate(client, token)
    assert status == 410 and body["error"]["code"] == "invitation_expired"
    assert body["error"]["expired_at"] == expires_at
    assert domain.when(datetime.fromisoformat(expires_at)) in body["error"]["message"]


async def test_every_link_is_kept_as_its_hash_only(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    inv_id = await invite(client, world.add_portal(), new_email())
    tokens = [await last_token(pool, inv_id)]
    for _ in range(2):
        clock.advance(seconds=1)  # each link its own issue time, so the order is theirs
        await resend(client, inv_id)
        tokens.append(await last_token(pool, inv_id))
    rows = await pool.fetch(
        "SELECT * FROM invitation_links WHERE invitation_id = $1 ORDER BY issued_at",
        uuid.UUID(inv_id),
    )
    assert [r["token_hash"] for r in rows] == [domain.hash_token(t) for t in tokens]
    assert [r["reason"] for r in rows] == ["invited", "staff", "staff"]
    assert [r["replaced_at"] is None for r in rows] == [False, False, True]
    stored = " ".join(str(dict(r)) for r in rows)
    assert not any(token in stored for token in tokens)


# --- Email me a new link ----------------------------------------------------------------
async def test_a_replaced_link_gets_a_new_one_at_the_invited_address(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    email = new_email()
    inv_id = await invite(client, world.add_portal(), email)
    first = await last_token(pool, inv_id)
    await resend(client, inv_id)
    second = await last_token(pool, inv_id)

    answer = await ask_new_link(client, pool, first)
    assert answer == {"status": "requested"}
    sent = await mails(pool, inv_id)
    assert len(sent) == 3 and sent[-1]["to"] == email
    third = await last_token(pool, inv_id)
    assert third not in (first, second)
    resent = await events_of(pool, inv_id, "invitation.resent")
    assert [e["reason"] for e in resent] == ["staff", "requested_by_invitee"]
    assert (await validate(client, second))[1]["error"]["code"] == "invitation_replaced"
    assert (await validate(client, third))[0] == 200
    shown = await (await client.get(f"/invitations/{inv_id}")).json()
    assert shown["send_reason"] == "requested_by_invitee" and shown["send_count"] == 3


async def test_an_expired_link_gets_a_new_one_with_a_new_expiry(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    inv_id = await invite(client, world.add_portal(), new_email())
    token = await last_token(pool, inv_id)
    clock.advance(days=30)
    await ask_new_link(client, pool, token)
    fresh = await last_token(pool, inv_id)
    assert fresh != token
    shown = await (await client.get(f"/invitations/{inv_id}")).json()
    assert shown["status"] == "pending"
    assert shown["expires_at"] == (clock.now + timedelta(days=14)).isoformat()
    assert (await validate(client, fresh))[0] == 200


async def test_new_link_answers_alike_and_sends_nothing_when_it_must_not(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    """One answer whether it is sent or not; nothing is sent for a revoked or accepted
    invitation, a portal no longer Active, a link that still works, or a stranger's."""

    async def replaced_link(portal: dict[str, Any] | None = None) -> tuple[str, str]:
        inv_id = await invite(client, portal or world.add_portal(), new_email())
        token = await last_token(pool, inv_id)
        await resend(client, inv_id)
        return inv_id, token

    revoked_id, revoked = await replaced_link()
    await client.post(f"/invitations/{revoked_id}/revoke")

    accepted_id, accepted = await replaced_link()
    current = await last_token(pool, accepted_id)
    claim = (await (await client.post("/invitations/reserve", json={"token": current})).json())[
        "claim"
    ]
    await client.post(
        "/invitations/accept",
        json={"token": current, "claim": claim, "user_id": str(uuid.uuid4())},
    )

    archived_portal = world.add_portal()
    archived_id, archived = await replaced_link(archived_portal)
    await archive_in_replica(pool, archived_portal)

    working_id = await invite(client, world.add_portal(), new_email())
    working = await last_token(pool, working_id)

    answers = []
    for inv_id, token in (
        (revoked_id, revoked),
        (accepted_id, accepted),
        (archived_id, archived),
        (working_id, working),
        (None, "a-token-we-never-sent"),
        (None, ""),
        (None, "x" * 1000),
    ):
        before = len(await mails(pool, inv_id)) if inv_id else 0
        answers.append(await ask_new_link(client, pool, token))
        if inv_id:
            assert len(await mails(pool, inv_id)) == before, token
    assert answers == [{"status": "requested"}] * len(answers)
    assert (await validate(client, working))[0] == 200  # the working link still works


async def test_new_link_is_limited_per_invitation_per_day(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    inv_id = await invite(client, world.add_portal(), new_email())
    token = await last_token(pool, inv_id)
    clock.advance(days=15)  # expired: each request may send a fresh link
    for expected in (2, 3, 4):
        await ask_new_link(client, pool, token)  # the expired first link, each time
        assert len(await mails(pool, inv_id)) == expected
        clock.advance(minutes=5)
    await ask_new_link(client, pool, token)  # a fourth the same day: nothing
    assert len(await mails(pool, inv_id)) == 4
    clock.advance(days=1)
    await ask_new_link(client, pool, token)
    assert len(await mails(pool, inv_id)) == 5
    reasons = [e["reason"] for e in await events_of(pool, inv_id, "invitation.resent")]
    assert reasons == ["requested_by_invitee"] * 4


async def test_repeated_clicks_are_one_request(
    app_factory: AppFactory, world: World, pool: asyncpg.Pool
) -> None:
    client = await app_factory()
    inv_id = await invite(client, world.add_portal(), new_email())
    token = await last_token(pool, inv_id)
    await resend(client, inv_id)
    deps: Deps = client.app[DEPS]
    async with pool.acquire() as conn:
        for _ in range(3):
            await repo.add_link_request(conn, domain.hash_token(token), deps.clock())
    waiting = await pool.fetchval(
        "SELECT count(*) FROM link_requests WHERE token_hash = $1", domain.hash_token(token)
    )
    assert waiting in (0, 1)  # coalesced (or already served by the app's worker)
    await ask_new_link(client, pool, token)
    assert len(await mails(pool, inv_id)) == 3


# --- why each new link went ---------------------------------------------------------------
async def test_every_resend_says_who_asked(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal()
    email = new_email()
    inv_id = await invite(client, portal, email)
    assert (await resend(client, inv_id)).status == 200  # the screen: no body
    assert (await resend(client, inv_id, reason="api")).status == 200
    await invite(client, portal, email, resend_reason="api")  # the API, pending already
    handler = requested_handler(client)
    data = InvitationRequested(
        portal_id=uuid.UUID(portal["id"]), email=email, idempotency_key=uuid.uuid4().hex
    )
    async with pool.acquire() as conn, conn.transaction():
        await handler(conn, make_event("invitation.requested", data, source="crm"), data)
    reasons = [e["reason"] for e in await events_of(pool, inv_id, "invitation.resent")]
    assert reasons == ["staff", "api", "api", "invitation_requested"]
    bad = await resend(client, inv_id, reason="requested_by_invitee")
    assert bad.status == 422  # only the worker sends on the invitee's behalf


# --- Resend for a portal that isn't Active ---------------------------------------------
async def test_resend_is_refused_for_a_portal_that_is_not_active(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    portal = world.add_portal(title="Acme Archive")
    inv_id = await invite(client, portal, new_email())
    token = await last_token(pool, inv_id)
    await archive_in_replica(pool, portal)
    response = await resend(client, inv_id)
    assert response.status == 409
    error = (await response.json())["error"]
    assert error["code"] == "portal_not_active"
    assert error["message"] == (
        "The portal 'Acme Archive' is Archived: its invitations can't be resent."
        " Make the portal Active first."
    )
    assert await last_token(pool, inv_id) == token and len(await mails(pool, inv_id)) == 1

    # The replica lags a portal made Active again a moment ago: portals is asked first.
    portal["status"] = "active"
    portal["revision"] += 1
    assert (await resend(client, inv_id)).status == 200
    # ...and one archived a moment ago, before portal.updated reached the replica.
    portal["status"] = "pending"
    portal["revision"] += 1
    response = await resend(client, inv_id)
    assert response.status == 409
    assert "is Pending" in (await response.json())["error"]["message"]


# --- the caps on new links -------------------------------------------------------------------
async def test_one_invitation_is_emailed_at_most_five_times_an_hour(
    client: Client, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    inv_id = await invite(client, world.add_portal(), new_email())
    for _ in range(4):
        clock.advance(minutes=1)
        assert (await resend(client, inv_id)).status == 200
    latest = await last_token(pool, inv_id)
    first_sent = clock.now - timedelta(minutes=4)
    clock.advance(minutes=10)
    refused = await resend(client, inv_id)
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert error["code"] == "send_rate_limited"
    next_at = first_sent + timedelta(hours=1)
    assert refused.headers["Retry-After"] == str(int((next_at - clock.now).total_seconds()))
    assert datetime.fromisoformat(error["retry_at"]) == next_at
    shown = next_at.replace(second=0, microsecond=0)
    shown += timedelta(minutes=1) if shown < next_at else timedelta(0)
    assert error["message"] == (
        "This invitation has been emailed 5 times in the last hour."
        f" The next email can go at {domain.when(shown)}."
    )
    # Nothing changed: the latest link is still the one that works.
    assert await last_token(pool, inv_id) == latest
    assert (await validate(client, latest))[0] == 200
    clock.now = next_at
    assert (await resend(client, inv_id)).status == 200


async def test_one_address_gets_at_most_m_new_links_an_hour_but_first_invitations_go(
    app_factory: AppFactory, world: World, pool: asyncpg.Pool, clock: Clock
) -> None:
    client = await app_factory(invitations_sends_per_address_hour=3)
    email = new_email()
    # Invited to five portals in a row by staff: first invitations are never refused.
    ids = [await invite(client, world.add_portal(), email) for _ in range(5)]
    first_link = await last_token(pool, ids[0])
    for inv_id in ids[:3]:
        assert (await resend(client, inv_id)).status == 200
    refused = await resend(client, ids[3])
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert error["code"] == "send_rate_limited"
    assert error["message"].startswith(f"{email} has been sent 3 new invitation links")
    # The invitee's own request is held to the same cap, and answered alike.
    clock.advance(minutes=30)
    await ask_new_link(client, pool, first_link)  # not sent: the address is at its cap
    assert len(await mails(pool, ids[0])) == 2
    # A sixth portal, still fine.
    assert (await invite(client, world.add_portal(), email)) is not None
    clock.advance(minutes=31)
    assert (await resend(client, ids[3])).status == 200


async def test_invitation_requested_beyond_the_cap_is_rejected_with_retry_at(
    app_factory: AppFactory, world: World, pool: asyncpg.Pool
) -> None:
    client = await app_factory(invitations_sends_per_invitation_hour=1)
    portal = world.add_portal()
    email = new_email()
    inv_id = await invite(client, portal, email)
    handler = requested_handler(client)
    key = uuid.uuid4().hex
    data = InvitationRequested(portal_id=uuid.UUID(portal["id"]), email=email, idempotency_key=key)
    async with pool.acquire() as conn, conn.transaction():
        await handler(conn, make_event("invitation.requested", data, source="crm"), data)
    rows = await pool.fetch(
        "SELECT body FROM outbox WHERE routing_key = 'invitation.rejected'"
        " AND convert_from(body, 'UTF8') LIKE '%' || $1 || '%'",
        key,
    )
    assert len(rows) == 1
    rejected = orjson.loads(rows[0]["body"])["data"]
    assert rejected["reason"] == "send_rate_limited" and rejected["retry_at"]
    assert "emailed once in the last hour" in rejected["message"]
    assert len(await mails(pool, inv_id)) == 1
