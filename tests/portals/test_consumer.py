"""Events on the real broker: invitation.accepted grants, identity.user.disabled and
.erased revoke (and, with .enabled, decide which later grants a closed account may get),
and what portals writes to its outbox reaches the exchange."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from libs.common.bus import Binding, Bus
from libs.common.events import (
    Envelope,
    EventData,
    InvitationAccepted,
    UserDisabled,
    UserEnabled,
    UserErased,
    make_event,
)
from services.portals import repository as repo
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


# --- a closed account (disabled, erased) and grants that come after the news --------------
# The events come from two services through two outboxes, so portals may hear of an
# acceptance after the Disable that followed it. Each case delivers its events one at a
# time, in the order given, with the occurred_at each names.
_ACCOUNT_EVENTS: dict[str, type[EventData]] = {
    "identity.user.disabled": UserDisabled,
    "identity.user.enabled": UserEnabled,
    "identity.user.erased": UserErased,
}


def _account_event(event_type: str, user: str, at: datetime) -> Envelope:
    data = _ACCOUNT_EVENTS[event_type](user_id=uuid.UUID(user))  # type: ignore[call-arg]
    return make_event(event_type, data, source="identity").model_copy(update={"occurred_at": at})


def _accepted_at(portal: dict[str, Any], user: str, at: datetime) -> Envelope:
    envelope = accepted(portal["id"], user, None, uuid.uuid4())
    return envelope.model_copy(update={"occurred_at": at})


async def _deliver(publisher: Bus, db: asyncpg.Pool, *envelopes: Envelope) -> None:
    for envelope in envelopes:
        await publisher.publish_envelope(envelope)
        await eventually(lambda envelope=envelope: applied(db, envelope.id))  # type: ignore[misc]


async def _portals_of(client: Client, user: str) -> list[str]:
    body = await (await client.get(f"/users/{user}/portals")).json()
    return [item["id"] for item in body["items"]]


async def test_an_acceptance_heard_after_the_disable_grants_nothing(
    client: Client, db: asyncpg.Pool, publisher: Bus, new_portal: NewPortal
) -> None:
    """Accepted, then disabled; portals hears the Disable first. Nor does the Enable that
    follows give the portal back: only a new invitation does."""
    portal, user, now = await new_portal(), str(uuid.uuid4()), datetime.now(UTC)
    await _deliver(
        publisher,
        db,
        _account_event("identity.user.disabled", user, now),
        _accepted_at(portal, user, now - timedelta(seconds=2)),
    )
    assert await _portals_of(client, user) == []
    await _deliver(publisher, db, _account_event("identity.user.enabled", user, now + _SECOND))
    assert await _portals_of(client, user) == []


_SECOND = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("disabled", "enabled", "accepted", "granted"),
    [
        # Accepted, disabled, enabled again; the acceptance heard last (its relay behind).
        (0, 1, -1, False),
        # Accepted while disabled, heard after the Enable.
        (0, 2, 1, False),
        # Disabled, enabled, then invited anew and accepted: the portal is theirs.
        (-2, -1, 0, True),
    ],
    ids=["accepted_before_the_disable", "accepted_while_disabled", "accepted_after_the_enable"],
)
async def test_an_acceptance_heard_after_a_disable_and_an_enable(
    client: Client,
    db: asyncpg.Pool,
    publisher: Bus,
    new_portal: NewPortal,
    disabled: int,
    enabled: int,
    accepted: int,
    granted: bool,
) -> None:
    """The Disable and the Enable heard first (seconds from now), the acceptance last:
    only one made after the Enable gives the portal."""
    portal, user, now = await new_portal(), str(uuid.uuid4()), datetime.now(UTC)
    await _deliver(
        publisher,
        db,
        _account_event("identity.user.disabled", user, now + disabled * _SECOND),
        _account_event("identity.user.enabled", user, now + enabled * _SECOND),
        _accepted_at(portal, user, now + accepted * _SECOND),
    )
    assert await _portals_of(client, user) == ([portal["id"]] if granted else [])


async def test_the_accept_sagas_grant_made_before_the_enable_grants_nothing(
    client: Client, db: asyncpg.Pool, publisher: Bus, new_portal: NewPortal
) -> None:
    """The accept saga's own grant names when the link was accepted: one accepted before
    a Disable and the Enable that followed (a slow or retried step) is refused, as its
    event would be; one accepted after the Enable is granted."""
    before, after = await new_portal(), await new_portal()
    user, now = str(uuid.uuid4()), datetime.now(UTC)
    await _deliver(
        publisher,
        db,
        _account_event("identity.user.disabled", user, now - _SECOND),
        _account_event("identity.user.enabled", user, now),
    )
    for portal, accepted_at, status in (
        (before, now - 2 * _SECOND, 422),
        (after, now + _SECOND, 200),
    ):
        body = {"user_id": user, "grant_key": str(uuid.uuid4()), "accepted_at": accepted_at}
        resp = await client.post(
            f"/portals/{portal['id']}/access", data=orjson.dumps(body), headers=_JSON
        )
        assert resp.status == status, await resp.text()
        if status == 422:
            assert (await resp.json())["error"]["code"] == "user_disabled"
    assert await _portals_of(client, user) == [after["id"]]


_JSON = {"Content-Type": "application/json"}


async def test_an_enable_heard_before_its_disable_keeps_the_account_enabled(
    client: Client, db: asyncpg.Pool, publisher: Bus, new_portal: NewPortal
) -> None:
    """Disabled then enabled, heard the other way round: the account is enabled. The late
    Disable takes the portals the account had before it, not one granted after the
    Enable."""
    before, after = await new_portal(), await new_portal()
    user = str(uuid.uuid4())
    resp = await client.post(f"/portals/{before['id']}/access", json={"user_id": user})
    assert resp.status == 200
    disabled_at = datetime.now(UTC)
    enabled_at = disabled_at + timedelta(milliseconds=10)
    await _deliver(publisher, db, _account_event("identity.user.enabled", user, enabled_at))
    await asyncio.sleep(0.05)
    resp = await client.post(f"/portals/{after['id']}/access", json={"user_id": user})
    assert resp.status == 200, await resp.text()
    await _deliver(publisher, db, _account_event("identity.user.disabled", user, disabled_at))
    assert await _portals_of(client, user) == [after["id"]]
    third = await new_portal()
    resp = await client.post(f"/portals/{third['id']}/access", json={"user_id": user})
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("closed", ["identity.user.disabled", "identity.user.erased"])
async def test_a_closed_account_is_given_no_portal_by_any_route(
    client: Client, db: asyncpg.Pool, publisher: Bus, new_portal: NewPortal, closed: str
) -> None:
    """After the Disable (or the erasure) was heard: an acceptance made later, the accept
    saga's grant and the editor's Client and Sub-Clients (identity checked the account a
    moment before) all find it closed."""
    portal, user, now = await new_portal(), str(uuid.uuid4()), datetime.now(UTC)
    await _deliver(
        publisher,
        db,
        _account_event(closed, user, now - _SECOND),
        _accepted_at(portal, user, now),
    )
    assert await _portals_of(client, user) == []
    for method, path, body in (
        ("POST", f"/portals/{portal['id']}/access", {"user_id": user, "grant_key": "k-1"}),
        ("PUT", f"/portals/{portal['id']}/client", {"user_id": user}),
        ("PUT", f"/portals/{portal['id']}/sub-clients", {"user_ids": [user]}),
    ):
        resp = await client.request(method, path, json=body)
        assert resp.status == 422, (path, await resp.text())
        assert (await resp.json())["error"]["code"] == "user_disabled"
    assert await _portals_of(client, user) == []


async def test_a_disable_heard_while_a_grant_is_written_takes_that_grant(
    client: Client,
    db: asyncpg.Pool,
    publisher: Bus,
    new_portal: NewPortal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The accept saga's grant has found the account open; the news of its Disable is
    heard before the grant writes (forced here at the write). The grant is still there
    when the Disable is applied, which takes it."""
    portal, user = await new_portal(), str(uuid.uuid4())
    disable = _account_event("identity.user.disabled", user, datetime.now(UTC))
    put_access = repo.put_access

    async def disable_heard_meanwhile(conn: Any, *args: Any) -> None:
        await publisher.publish_envelope(disable)

        async def applied_or_waiting() -> bool:
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            return bool(waiting) or await applied(db, disable.id)

        await eventually(applied_or_waiting)
        await put_access(conn, *args)

    monkeypatch.setattr(repo, "put_access", disable_heard_meanwhile)
    resp = await client.post(f"/portals/{portal['id']}/access", json={"user_id": user})
    monkeypatch.setattr(repo, "put_access", put_access)
    assert resp.status == 200, await resp.text()
    await eventually(lambda: applied(db, disable.id))
    assert await _portals_of(client, user) == []
