"""A staff invitation never outlives its sender's right to send it: when identity says the
Administrator who sent it was disabled, erased or given a role that can't invite staff,
their open staff invitations are revoked as Revoke does it. Client invitations stay, and
so do staff invitations that name no sender (made before the sender was recorded)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from libs.common.actor import Actor
from libs.common.events import (
    EventData,
    UserDisabled,
    UserErased,
    UserRoleChanged,
    make_event,
)
from services.invitations.api import DEPS
from services.invitations.consumer import HANDLERS
from tests.invitations.conftest import World, last_token, outbox_events
from tests.invitations.test_links import validate

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
SENDER_EMAIL = "dana@agency.example"
# Whoever disabled, erased or demoted the sender: the revocation is theirs in the Activity log.
ACTOR = Actor(type="user", id=str(uuid.uuid4()), name="ops@agency.example")


def new_email() -> str:
    return f"staff-{uuid.uuid4().hex[:10]}@example.com"


async def sent(
    client: Client, sender: uuid.UUID | None, role: str = "administrator"
) -> dict[str, Any]:
    body: dict[str, Any] = {"email": new_email(), "role": role, "invited_by": SENDER_EMAIL}
    if sender is not None:
        body["invited_by_id"] = str(sender)
    response = await client.post("/staff-invitations", json=body)
    assert response.status == 201, await response.text()
    invitation: dict[str, Any] = (await response.json())["invitation"]
    return invitation


async def status_of(client: Client, invitation: dict[str, Any]) -> str:
    listed = await (await client.get("/staff-invitations")).json()
    shown = {i["id"]: i["status"] for i in listed["items"]}
    return shown.get(invitation["id"], "not listed")


async def apply(
    client: Client, event_type: str, data: EventData, occurred_at: datetime | None = None
) -> None:
    """The event as identity publishes it, through the consumer's handler."""
    envelope = make_event(event_type, data, source="identity", actor=ACTOR)
    if occurred_at is not None:
        envelope = envelope.model_copy(update={"occurred_at": occurred_at})
    await HANDLERS[event_type](client.app[DEPS], envelope, data)


async def revocations(pool: asyncpg.Pool, invitation: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e for t, e in await outbox_events(pool, invitation["id"]) if t == "invitation.staff.revoked"
    ]


async def test_the_sender_is_recorded_when_the_gateway_names_them(client: Client) -> None:
    sender = uuid.uuid4()
    assert (await sent(client, sender))["invited_by_id"] == str(sender)
    assert (await sent(client, None))["invited_by_id"] is None
    response = await client.post(
        "/staff-invitations",
        json={"email": new_email(), "role": "staff", "invited_by_id": "not-a-uuid"},
    )
    assert response.status == 422


async def test_a_disabled_senders_open_staff_invitations_are_revoked_once(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    sender, other = uuid.uuid4(), uuid.uuid4()
    pending = await sent(client, sender)
    as_staff = await sent(client, sender, "staff")
    expired = await sent(client, sender)
    await pool.execute(
        "UPDATE invitations SET status = 'expired', sent_at = now() - interval '15 days',"
        " expires_at = now() - interval '1 day' WHERE id = $1",
        uuid.UUID(expired["id"]),
    )
    accepted = await sent(client, sender)
    await pool.execute(
        "UPDATE invitations SET status = 'accepted', accepted_at = now(),"
        " accepted_user_id = $2 WHERE id = $1",
        uuid.UUID(accepted["id"]),
        uuid.uuid4(),
    )
    others = await sent(client, other)
    unknown = await sent(client, None)  # sent before senders were recorded
    portal = world.add_portal()
    response = await client.post(
        "/invitations",
        json={"portal_id": portal["id"], "email": new_email(), "invited_by": SENDER_EMAIL},
    )
    assert response.status == 201
    client_invitation = (await response.json())["invitation"]
    token = await last_token(pool, pending["id"])

    await apply(client, "identity.user.disabled", UserDisabled(user_id=sender))

    for invitation in (pending, as_staff, expired):
        row = await (await client.get("/staff-invitations")).json()
        assert invitation["id"] not in [i["id"] for i in row["items"]]  # off the Users screen
        (event,) = await revocations(pool, invitation)
        assert event["data"]["email"] == invitation["email"]
        assert event["actor"] == ACTOR.model_dump()
    stored = await pool.fetch(
        "SELECT id, status FROM invitations WHERE id = ANY($1::uuid[])",
        [uuid.UUID(i["id"]) for i in (pending, as_staff, expired, accepted, others, unknown)],
    )
    statuses = {str(r["id"]): r["status"] for r in stored}
    assert [statuses[i["id"]] for i in (pending, as_staff, expired)] == ["revoked"] * 3
    assert statuses[accepted["id"]] == "accepted"
    assert await status_of(client, others) == "pending"
    assert await status_of(client, unknown) == "pending"
    shown = await (await client.get(f"/invitations/{client_invitation['id']}")).json()
    assert shown["status"] == "pending"
    # The link gives the answer of any revoked invitation.
    code, answer = await validate(client, token)
    assert code == 410 and answer["error"]["code"] == "invitation_revoked"

    # Delivered again (or disabled again after an enable): nothing more happens.
    await apply(client, "identity.user.disabled", UserDisabled(user_id=sender))
    assert len(await revocations(pool, pending)) == 1


async def test_a_late_event_leaves_what_the_sender_sent_since(client: Client) -> None:
    """Disabled, enabled again, invites again: the disable, applied late, takes only what
    was sent before it (as an erasure applied late does)."""
    sender = uuid.uuid4()
    before = datetime.now(UTC) - timedelta(minutes=5)
    since = await sent(client, sender)
    await apply(client, "identity.user.disabled", UserDisabled(user_id=sender), before)
    assert await status_of(client, since) == "pending"


@pytest.mark.parametrize(
    ("role", "revoked"), [("staff", True), ("client", True), ("administrator", False)]
)
async def test_a_sender_who_may_no_longer_invite_staff_loses_their_invitations(
    client: Client, role: str, revoked: bool
) -> None:
    sender = uuid.uuid4()
    invitation = await sent(client, sender)
    previous = "staff" if role == "administrator" else "administrator"
    changed = UserRoleChanged(user_id=sender, role=role, previous_role=previous)  # type: ignore[arg-type]
    await apply(client, "identity.user.role_changed", changed)
    assert await status_of(client, invitation) == ("not listed" if revoked else "pending")


async def test_an_erased_senders_invitations_are_revoked(
    client: Client, pool: asyncpg.Pool
) -> None:
    sender = uuid.uuid4()
    invitation = await sent(client, sender)
    await apply(client, "identity.user.erased", UserErased(user_id=sender))
    assert await status_of(client, invitation) == "not listed"
    assert len(await revocations(pool, invitation)) == 1


# --- at the link: the event not applied yet ------------------------------------------------
async def sender_in(world: World, role: str = "administrator") -> tuple[str, uuid.UUID]:
    """An Administrator identity knows: their address and id."""
    email = f"admin-{uuid.uuid4().hex[:8]}@agency.example"
    return email, uuid.UUID(world.add_user(email, role=role))


async def sent_as(client: Client, email: str, sender: uuid.UUID) -> dict[str, Any]:
    body = {
        "email": new_email(),
        "role": "administrator",
        "invited_by": email,
        "invited_by_id": str(sender),
    }
    response = await client.post("/staff-invitations", json=body)
    assert response.status == 201, await response.text()
    invitation: dict[str, Any] = (await response.json())["invitation"]
    return invitation


async def reserve(client: Client, token: str) -> tuple[int, dict[str, Any]]:
    response = await client.post("/invitations/reserve", json={"token": token})
    return response.status, await response.json()


async def test_the_link_of_an_active_senders_invitation_works(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    email, sender = await sender_in(world)
    invitation = await sent_as(client, email, sender)
    token = await last_token(pool, invitation["id"])
    assert (await validate(client, token))[0] == 200
    assert (await reserve(client, token))[0] == 200


@pytest.mark.parametrize("lost", ["disabled", "demoted", "erased", "address_reused"])
async def test_a_sender_who_lost_the_right_is_caught_at_the_link(
    client: Client, world: World, pool: asyncpg.Pool, lost: str
) -> None:
    """identity.user.* not applied yet (the queue behind, the service just started): the
    link asks identity about the sender, and revokes what the event would have revoked."""
    email, sender = await sender_in(world)
    invitation = await sent_as(client, email, sender)
    other = await sent_as(client, email, sender)
    token = await last_token(pool, invitation["id"])
    if lost == "disabled":
        world.disabled.add(str(sender))
    elif lost == "demoted":
        world.roles[str(sender)] = "staff"
    elif lost == "erased":
        del world.users[email]
    else:  # erased, and someone else has the address now
        world.users[email] = str(uuid.uuid4())
        world.roles[world.users[email]] = "administrator"

    code, answer = await validate(client, token)
    assert code == 410 and answer["error"]["code"] == "invitation_revoked"
    code, answer = await reserve(client, token)
    assert code == 410 and answer["error"]["code"] == "invitation_revoked"
    for revoked in (invitation, other):
        assert await status_of(client, revoked) == "not listed"
        assert len(await revocations(pool, revoked)) == 1


async def test_the_check_at_reserve_takes_back_the_claim(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    """Disabled between the page (validate) and Set Password (reserve): refused, and the
    invitation is revoked rather than left spent for a claim nobody will finish."""
    email, sender = await sender_in(world)
    invitation = await sent_as(client, email, sender)
    token = await last_token(pool, invitation["id"])
    assert (await validate(client, token))[0] == 200
    world.disabled.add(str(sender))
    code, answer = await reserve(client, token)
    assert code == 410 and answer["error"]["code"] == "invitation_revoked"
    row = await pool.fetchrow(
        "SELECT status, accept_claim FROM invitations WHERE id = $1", uuid.UUID(invitation["id"])
    )
    assert row is not None and row["status"] == "revoked" and row["accept_claim"] is None


async def test_an_invitation_without_a_recorded_sender_asks_nobody(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    invitation = await sent(client, None)
    token = await last_token(pool, invitation["id"])
    world.identity_down = True  # were the sender asked, this would answer 503
    try:
        assert (await reserve(client, token))[0] == 200
    finally:
        world.identity_down = False


async def test_identity_away_at_reserve_leaves_the_link_to_the_next_try(
    client: Client, world: World, pool: asyncpg.Pool
) -> None:
    """identity unreachable while the link asks about the sender (after the page, before
    Set Password): 503, and the invitation is pending again, so the person's next try
    works at once rather than finding the link spent by a claim nobody holds."""
    email, sender = await sender_in(world)
    invitation = await sent_as(client, email, sender)
    token = await last_token(pool, invitation["id"])
    assert (await validate(client, token))[0] == 200
    world.identity_down = True
    try:
        assert (await reserve(client, token))[0] == 503
    finally:
        world.identity_down = False
    row = await pool.fetchrow(
        "SELECT status, accept_claim FROM invitations WHERE id = $1", uuid.UUID(invitation["id"])
    )
    assert row is not None and (row["status"], row["accept_claim"]) == ("pending", None)
    assert (await reserve(client, token))[0] == 200
