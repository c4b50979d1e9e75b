"""Events on the real broker: invitation.accepted grants, identity.user.disabled and
.erased revoke,
and what portals writes to its outbox reaches the exchange."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from libs.common.bus import Binding, Bus
from libs.common.events import (
    Envelope,
    InvitationAccepted,
    UserDisabled,
    UserErased,
    make_event,
)
from tests.portals.conftest import eventually, outbox_events
from tests.support.env import TestEnv
from tests.support.owners import OwnersBus

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
NewPortal = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(scope="module")
async def publisher(migrated_schemas: TestEnv) -> AsyncIterator[Bus]:
    bus = OwnersBus(migrated_schemas)
    await bus.connect()
    yield bus  # type: ignore[misc]
    await bus.close()


def accepted(
    portal_id: str,
    user_id: str,
    sub_client: bool | None,
    invitation_id: uuid.UUID,
    idempotency_key: str | None = None,
) -> Envelope:
    data = InvitationAccepted(
        invitation_id=invitation_id,
        portal_id=uuid.UUID(portal_id),
        email="client@example.com",
        user_id=uuid.UUID(user_id),
        sub_client=sub_client,
        idempotency_key=idempotency_key,
    )
    return make_event("invitation.accepted", data, source="invitations")


async def applied(db: asyncpg.Pool, event_id: uuid.UUID) -> bool:
    return bool(await db.fetchval("SELECT true FROM inbox WHERE event_id = $1", event_id))


async def test_invitation_accepted_grants_access_once(
    client: Client, db: asyncpg.Pool, publisher: Bus, new_portal: NewPortal
) -> None:
    portal = await new_portal()
    user = str(uuid.uuid4())
    envelope = accepted(portal["id"], user, None, uuid.uuid4(), "crm-deal-4711")

    await publisher.publish_envelope(envelope)
    await publisher.publish_envelope(envelope)  # a redelivery: same event id
    await eventually(lambda: applied(db, envelope.id))

    resp = await client.get(f"/users/{user}/portals/{portal['slug']}")
    assert resp.status == 200 and (await resp.json())["role"] == "client"

    # The same invitation announced again under a new event id changes nothing either.
    again = accepted(portal["id"], user, None, uuid.UUID(envelope.data["invitation_id"]))
    await publisher.publish_envelope(again)
    await eventually(lambda: applied(db, again.id))

    granted = [d for t, d in await outbox_events(db, portal["id"]) if t == "portal.access.granted"]
    # The grant carries the key the invitation was made under (webhooks, integrations).
    assert granted == [
        {
            "portal_id": portal["id"],
            "user_id": user,
            "role": "client",
            "idempotency_key": "crm-deal-4711",
        }
    ]
    count = await db.fetchval(
        "SELECT count(*) FROM access WHERE portal_id = $1", uuid.UUID(portal["id"])
    )
    assert count == 1


async def test_invitation_accepted_after_the_gateway_granted_is_harmless(
    client: Client, db: asyncpg.Pool, publisher: Bus, new_portal: NewPortal
) -> None:
    portal = await new_portal()
    user, invitation_id = str(uuid.uuid4()), uuid.uuid4()
    resp = await client.post(
        f"/portals/{portal['id']}/access",
        json={"user_id": user, "role": "sub_client", "grant_key": str(invitation_id)},
    )
    assert (await resp.json())["role"] == "sub_client"

    envelope = accepted(portal["id"], user, True, invitation_id)
    await publisher.publish_envelope(envelope)
    await eventually(lambda: applied(db, envelope.id))
    events = [t for t, _ in await outbox_events(db, portal["id"])]
    assert events.count("portal.access.granted") == 1


@pytest.mark.parametrize(
    ("sub_client", "expected"), [(True, "sub_client"), (False, "sub_client"), (None, "sub_client")]
)
async def test_invitation_accepted_roles_when_the_portal_has_a_client(
    client: Client,
    db: asyncpg.Pool,
    publisher: Bus,
    new_portal: NewPortal,
    sub_client: bool | None,
    expected: str,
) -> None:
    portal = await new_portal()
    await client.put(f"/portals/{portal['id']}/client", json={"user_id": str(uuid.uuid4())})
    user = str(uuid.uuid4())
    envelope = accepted(portal["id"], user, sub_client, uuid.uuid4())
    await publisher.publish_envelope(envelope)
    await eventually(lambda: applied(db, envelope.id))
    body = await (await client.get(f"/users/{user}/portals/{portal['slug']}")).json()
    assert body["role"] == expected


@pytest.mark.parametrize(("sub_client", "expected"), [(True, "sub_client"), (False, "client")])
async def test_invitation_accepted_roles_on_a_portal_without_client(
    client: Client,
    db: asyncpg.Pool,
    publisher: Bus,
    new_portal: NewPortal,
    sub_client: bool,
    expected: str,
) -> None:
    portal = await new_portal()
    user = str(uuid.uuid4())
    envelope = accepted(portal["id"], user, sub_client, uuid.uuid4())
    await publisher.publish_envelope(envelope)
    await eventually(lambda: applied(db, envelope.id))
    body = await (await client.get(f"/users/{user}/portals/{portal['slug']}")).json()
    assert body["role"] == expected


async def test_invitation_for_a_missing_portal_is_recorded_not_retried(
    client: Client, db: asyncpg.Pool, publisher: Bus
) -> None:
    envelope = accepted(str(uuid.uuid4()), str(uuid.uuid4()), None, uuid.uuid4())
    await publisher.publish_envelope(envelope)
    await eventually(lambda: applied(db, envelope.id))


async def test_user_disabled_removes_all_access(
    client: Client, db: asyncpg.Pool, publisher: Bus, new_portal: NewPortal
) -> None:
    user = str(uuid.uuid4())
    first, second = await new_portal(), await new_portal()
    await client.put(f"/portals/{first['id']}/client", json={"user_id": user})
    await client.put(f"/portals/{second['id']}/sub-clients", json={"user_ids": [user]})
    assert len((await (await client.get(f"/users/{user}/portals")).json())["items"]) == 2

    envelope = make_event(
        "identity.user.disabled", UserDisabled(user_id=uuid.UUID(user)), source="identity"
    )
    await publisher.publish_envelope(envelope)
    await eventually(lambda: applied(db, envelope.id))

    assert (await (await client.get(f"/users/{user}/portals")).json())["items"] == []
    for portal, role in ((first, "client"), (second, "sub_client")):
        revoked = [d for t, d in await outbox_events(db, portal["id"]) if t.endswith("revoked")]
        assert revoked == [
            {"portal_id": portal["id"], "user_id": user, "role": role, "idempotency_key": None}
        ]
        assert (await (await client.get(f"/portals/{portal['id']}")).json())["client_id"] is None


async def test_outbox_events_reach_the_exchange(
    client: Client, db: asyncpg.Pool, migrated_schemas: TestEnv, new_portal: NewPortal
) -> None:
    probe = Bus(migrated_schemas.amqp_url, migrated_schemas.bus_prefix, "probe1")
    await probe.connect()
    try:
        queue = await probe.declare_queue([Binding("events", "portal.#")])
        portal = await new_portal()
        received: list[dict[str, Any]] = []

        async def got_created() -> bool:
            message = await queue.get(fail=False, no_ack=True)
            if message is not None:
                received.append(orjson.loads(message.body))
            return any(
                e["type"] == "portal.created" and e["data"]["portal_id"] == portal["id"]
                for e in received
            )

        await eventually(got_created)

        async def marked_published() -> bool:
            unpublished = await db.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                " AND convert_from(body, 'UTF8') LIKE $1",
                f"%{portal['id']}%",
            )
            return bool(unpublished == 0)

        await eventually(marked_published)
    finally:
        await probe.close()


async def test_user_erased_removes_all_access_once(
    client: Client, db: asyncpg.Pool, publisher: Bus, new_portal: NewPortal
) -> None:
    user = str(uuid.uuid4())
    first, second = await new_portal(), await new_portal()
    await client.put(f"/portals/{first['id']}/client", json={"user_id": user})
    await client.put(f"/portals/{second['id']}/sub-clients", json={"user_ids": [user]})

    envelope = make_event(
        "identity.user.erased", UserErased(user_id=uuid.UUID(user)), source="identity"
    )
    await publisher.publish_envelope(envelope)
    await publisher.publish_envelope(envelope)  # a redelivery: same event id
    await eventually(lambda: applied(db, envelope.id))

    assert (await (await client.get(f"/users/{user}/portals")).json())["items"] == []
    assert await db.fetchval("SELECT count(*) FROM access WHERE user_id = $1", uuid.UUID(user)) == 0
    for portal in (first, second):
        revoked = [d for t, d in await outbox_events(db, portal["id"]) if t.endswith("revoked")]
        assert len(revoked) == 1
