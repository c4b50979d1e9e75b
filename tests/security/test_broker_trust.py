"""Nobody on the broker is trusted for being there (issue 12): an internal event acts only
when its owner's broker user sent it; the example integration may invite and read the
invitation lifecycle, nothing else; a service may publish only what it owns."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from aiormq.exceptions import ChannelAccessRefused, ChannelClosed, ChannelPreconditionFailed

from libs.common import broker
from libs.common.sealing import DEVELOPMENT_KEY, Sealer
from tests.security.conftest import api, unique_email
from tests.security.flows import new_client, publish_as
from tests.support.processes import ServiceProcess
from tests.support.stack import Browser, Stack, db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

Check = Callable[[Stack, dict[str, Any]], Awaitable[None]]


def forged(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "version": 1,
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": event_type.split(".")[0],  # claims to be the owner: the body proves nothing
        "correlation_id": f"forged-{uuid.uuid4().hex}",
        "data": data,
    }


async def own_fanout_into(
    channel: aio_pika.abc.AbstractChannel, events: aio_pika.abc.AbstractExchange, user: str
) -> aio_pika.abc.AbstractExchange:
    """An exchange of the integration's own (its name starts with its user) bound into the
    events exchange: what it publishes there reaches the services' queues, any key."""
    fanout = await channel.declare_exchange(
        f"{user}.fanout-{uuid.uuid4().hex[:6]}", aio_pika.ExchangeType.FANOUT, auto_delete=True
    )
    await events.bind(fanout)
    return fanout


async def routed_in(stack: Stack, body: bytes, routing_key: str, **properties: Any) -> None:
    """Publish as the integration through an exchange of its own bound into the events
    exchange (``own_fanout_into``), so ``routing_key`` reaches the services' queues."""
    user = stack.broker.integration_user
    connection = await aio_pika.connect(stack.broker.integration_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(f"{stack.broker.bus_prefix}.events", ensure=False)
        fanout = await own_fanout_into(channel, events, user)
        await fanout.publish(
            aio_pika.Message(body, user_id=user, **properties),
            routing_key=routing_key,
            timeout=10,
        )
    finally:
        await connection.close()


async def dead_letter_ids(stack: Stack, service: str) -> set[str]:
    """Message ids now in a service's dead-letter queue (read and put back)."""
    connection = await aio_pika.connect(stack.broker.amqp_url)
    ids: set[str] = set()
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{stack.broker.bus_prefix}.{service}.dead")
        while (message := await queue.get(fail=False)) is not None:
            ids.add(message.message_id or "")
        await channel.close()  # unacked: back in the queue for the next look
    finally:
        await connection.close()
    return ids


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.1)


def log_lines(process: ServiceProcess, after: int = 0) -> list[str]:
    """The service's log lines from line ``after`` on."""
    return Path(process.log_path).read_text().splitlines()[after:]


def logged(process: ServiceProcess, *words: str, after: int = 0) -> bool:
    """Whether a line of the service's log (from line ``after`` on) holds every word."""
    return any(all(word in line for word in words) for line in log_lines(process, after))


async def eventually_logged(
    process: ServiceProcess, *words: str, what: str, after: int = 0
) -> None:
    async def found() -> bool:
        return logged(process, *words, after=after)

    await eventually(found, what)


async def new_portal(admin: Browser) -> str:
    title = f"Trust {uuid.uuid4().hex[:6]}"
    code, portal = await api(admin, "POST", "/api/v1/portals", {"title": title, "status": "active"})
    assert code == 201, portal
    return str(portal["id"])


async def access_rows(stack: Stack, user_id: str) -> int:
    rows = await db_fetch(
        stack, "SELECT count(*) FROM portals.access WHERE user_id = $1", uuid.UUID(user_id)
    )
    return int(rows[0][0])


# Each internal event type a consumer acts on, forged by a program that is not its owner.
FORGERIES: list[tuple[str, str, str]] = [
    ("portals", "events", "invitation.accepted"),
    ("portals", "events", "identity.user.disabled"),
    ("invitations", "events", "identity.user.disabled"),
    ("invitations", "events", "identity.user.role_changed"),
    ("invitations", "events", "portal.created"),
    ("invitations", "events", "portal.updated"),
    ("invitations", "events", "mail.sent"),
    ("invitations", "events", "mail.failed"),
    ("mailer", "mail", "mail.requested"),
    ("mailer", "mail", "mail.withdraw"),
]


def forged_data(event_type: str, portal_id: str, user_id: str, email: str) -> dict[str, Any]:
    ref = str(uuid.uuid4())
    return {
        "invitation.accepted": {
            "invitation_id": ref,
            "portal_id": portal_id,
            "email": email,
            "user_id": user_id,
        },
        "identity.user.disabled": {"user_id": user_id},
        "identity.user.role_changed": {
            "user_id": user_id,
            "role": "client",
            "previous_role": "administrator",
        },
        "portal.created": {
            "portal_id": str(uuid.uuid4()),
            "slug": f"forged-{ref[:8]}",
            "title": "Forged",
            "status": "active",
            "revision": 1,
        },
        "portal.updated": {
            "portal_id": portal_id,
            "slug": "forged",
            "title": "Forged",
            "status": "archived",
            "revision": 999,
        },
        "mail.sent": {
            "mail_id": ref,
            "template": "invitation",
            "ref_type": "invitation",
            "ref_id": ref,
        },
        "mail.failed": {
            "mail_id": ref,
            "template": "invitation",
            "ref_type": "invitation",
            "ref_id": ref,
            "reason": "bounced",
            "attempts": 1,
        },
        # Withdrawing someone else's email (a password reset) is invitations' alone.
        "mail.withdraw": {"mail_ids": [ref]},
        "mail.requested": {
            "mail_id": ref,
            "template": "password_reset",
            "to": email,
            "ref_type": "password_reset",
            "ref_id": ref,
            # Even sealed with the (known) key: the sender is what gives it away.
            "context": Sealer(DEVELOPMENT_KEY).seal(
                {
                    "reset_url": "https://phish.example/reset-password?token=gotcha",
                    "expires_at": datetime.now(UTC).isoformat(),
                    "site_name": "ClientPress",
                }
            ),
        },
    }[event_type]


async def test_internal_events_from_anyone_but_their_owner_change_nothing(
    stack: Stack, admin: Browser
) -> None:
    """Published by a broker administrator's connection (the most a stolen credential
    gives): every forgery is dead-lettered, named in the log, and changes nothing."""
    portal_id = await new_portal(admin)
    victim = unique_email("victim")
    code, user = await api(admin, "GET", "/api/v1/users?limit=1")
    assert code == 200
    events = {}
    admin_user = broker.user_of(stack.broker.amqp_url)
    admin_user_id = user["items"][0]["id"]
    for service, kind, event_type in FORGERIES:
        event = forged(event_type, forged_data(event_type, portal_id, admin_user_id, victim))
        events[event["id"]] = (service, event_type)
        # It may even name itself: RabbitMQ vouches for the name, which isn't the owner's.
        await publish_as(stack.broker.amqp_url, stack, kind, event, user_id=admin_user)
    for service in {s for s, _, _ in FORGERIES}:
        expected = {i for i, (s, _) in events.items() if s == service}

        async def all_dead(service: str = service, expected: set[str] = expected) -> bool:
            return expected <= await dead_letter_ids(stack, service)

        await eventually(all_dead, f"{service}'s forgeries in its dead-letter queue")
    # No effect: no access granted to the admin, the portal still Active under its title,
    # no phishing mail sent.
    assert await access_rows(stack, admin_user_id) == 0
    code, portal = await api(admin, "GET", f"/api/v1/portals/{portal_id}")
    assert portal["status"] == "active" and portal["title"].startswith("Trust")
    await asyncio.sleep(0.5)
    assert not [m for m in stack.sink.messages if "phish.example" in m.as_string()]
    for service in ("portals", "invitations", "mailer"):
        lines = Path(stack[service].log_path).read_text().splitlines()
        refused = [
            entry
            for entry in (orjson.loads(line) for line in lines if line.startswith("{"))
            if entry.get("event") == "event_sender_refused"
        ]
        assert any(entry["sender"] == admin_user for entry in refused), service


async def test_a_forged_session_revocation_is_ignored_by_the_gateway(stack: Stack) -> None:
    event = forged("identity.session.revoked", {"user_id": str(uuid.uuid4()), "reason": "logout"})
    await publish_as(stack.broker.amqp_url, stack, "events", event)

    await eventually_logged(
        stack["gateway"],
        "event_sender_refused",
        event["correlation_id"],
        what="the gateway to refuse the forged revocation",
    )


async def test_a_body_claiming_another_type_than_its_routing_key_is_refused(stack: Stack) -> None:
    """Identity may publish identity.*; a body saying invitation.accepted under its key is
    still not an invitation acceptance."""
    event = forged(
        "invitation.accepted",
        {
            "invitation_id": str(uuid.uuid4()),
            "portal_id": str(uuid.uuid4()),
            "email": "x@example.com",
            "user_id": str(uuid.uuid4()),
        },
    )
    connection = await aio_pika.connect(stack.broker.amqp_url_as("identity"))
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{stack.broker.bus_prefix}.events")
        await exchange.publish(
            aio_pika.Message(
                orjson.dumps(event),
                message_id=event["id"],
                user_id=broker.broker_user(stack.broker.bus_prefix, "identity"),
            ),
            routing_key="identity.user.disabled",
        )
    finally:
        await connection.close()

    async def dead() -> bool:
        return event["id"] in await dead_letter_ids(stack, "portals")

    await eventually(dead, "the mismatched message in portals' dead-letter queue")


async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    await message.reject()


async def _refused(
    action: Callable[[aio_pika.abc.AbstractChannel], Awaitable[object]], url: str
) -> BaseException:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(
            (ChannelAccessRefused, ChannelPreconditionFailed, ChannelClosed)
        ) as caught:
            await action(channel)
        return caught.value
    finally:
        await connection.close()


async def test_a_service_may_publish_only_what_it_owns(stack: Stack) -> None:
    prefix = stack.broker.bus_prefix
    mailer_url = stack.broker.amqp_url_as("mailer")

    async def publish(
        channel: aio_pika.abc.AbstractChannel, kind: str, key: str, **props: Any
    ) -> None:
        exchange = await channel.get_exchange(f"{prefix}.{kind}")
        await exchange.publish(aio_pika.Message(b"{}", **props), routing_key=key, timeout=10)

    # The mailer may announce mail.sent, never an acceptance, a mail job or a disable.
    for kind, key in (
        ("events", "invitation.accepted"),
        ("mail", "mail.requested"),
        ("events", "identity.user.disabled"),
    ):
        await _refused(lambda ch, kind=kind, key=key: publish(ch, kind, key), mailer_url)
    # Nor can it claim to be someone else: RabbitMQ checks user_id against the login.
    claim = broker.broker_user(prefix, "invitations")
    await _refused(lambda ch: publish(ch, "events", "mail.sent", user_id=claim), mailer_url)
    # Only the mailer reads mail jobs: identity can't bind a queue to the mail exchange.
    identity_url = stack.broker.amqp_url_as("identity")

    async def bind_mail(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.declare_queue(f"{prefix}.identity.snoop", exclusive=True)
        await queue.bind(f"{prefix}.mail", "mail.requested")

    await _refused(bind_mail, identity_url)
    # Only invitations withdraws an email: identity (a mail job owner too) may not.
    await _refused(lambda ch: publish(ch, "mail", "mail.withdraw"), identity_url)


async def test_the_integration_may_invite_and_read_the_lifecycle_and_nothing_else(
    stack: Stack,
) -> None:
    prefix = stack.broker.bus_prefix
    url = stack.broker.integration_url

    # Allowed: its own server-named queue bound to invitation.* (see test_events_inbound
    # for the whole invite round trip as this user).
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(f"{prefix}.events", "invitation.*")
        await queue.bind(f"{prefix}.events", "invitation.accepted")
    finally:
        await connection.close()

    async def publish(channel: aio_pika.abc.AbstractChannel, key: str) -> None:
        exchange = await channel.get_exchange(f"{prefix}.events")
        await exchange.publish(aio_pika.Message(b"{}"), routing_key=key, timeout=10)

    for key in ("invitation.accepted", "identity.user.disabled", "portal.updated", "mail.sent"):
        await _refused(lambda ch, key=key: publish(ch, key), url)

    async def bind(channel: aio_pika.abc.AbstractChannel, exchange: str, key: str) -> None:
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(f"{prefix}.{exchange}", key)

    await _refused(lambda ch: bind(ch, "mail", "mail.requested"), url)  # the links
    await _refused(lambda ch: bind(ch, "mail", "#"), url)
    await _refused(lambda ch: bind(ch, "events", "#"), url)  # every internal fact
    await _refused(lambda ch: bind(ch, "events", "identity.#"), url)
    await _refused(lambda ch: bind(ch, "dlx", "mailer"), url)  # others' dead letters

    async def consume(channel: aio_pika.abc.AbstractChannel, name: str) -> None:
        queue = await channel.get_queue(name, ensure=True)
        await queue.consume(ignore)

    for name in (
        f"{prefix}.invitations",
        f"{prefix}.invitations.requests",
        f"{prefix}.invitations.requests.dead",
        f"{prefix}.mailer",
        f"{prefix}.mailer.dead",
    ):
        await _refused(lambda ch, name=name: consume(ch, name), url)

    async def squat(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(f"{prefix}.portals.extra", durable=True)

    await _refused(squat, url)


async def test_types_a_sender_makes_up_never_become_metric_labels(stack: Stack) -> None:
    """Every refused or malformed message used to add its own made-up type as a label of
    the consumer's counters: a series per message, kept for the life of the process, so
    any program allowed to publish could grow a service's memory and its /metrics page
    without bound. Unknown types are counted under one label."""
    prefix = stack.broker.bus_prefix
    made_up = [f"probe-{uuid.uuid4().hex}" for _ in range(6)]
    ids: set[str] = set()
    connection = await aio_pika.connect(stack.broker.integration_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{prefix}.events")
        for index, event_type in enumerate(made_up):
            event = forged(event_type, {"idempotency_key": "k", "email": "x@example.com"})
            ids.add(event["id"])
            # Half a JSON envelope whose type isn't its routing key, half not JSON at all
            # with the type only in the AMQP property.
            body = orjson.dumps(event) if index % 2 else b"not json"
            await exchange.publish(
                aio_pika.Message(
                    body,
                    message_id=event["id"],
                    type=event_type,
                    user_id=stack.broker.integration_user,
                ),
                routing_key="invitation.requested",
                timeout=10,
            )
    finally:
        await connection.close()

    async def dead() -> bool:
        return ids <= await dead_letter_ids(stack, "invitations.requests")

    await eventually(dead, "the made-up types in the requests' dead-letter queue")
    async with (
        aiohttp.ClientSession() as session,
        session.get(stack["invitations"].management_url + "/metrics") as response,
    ):
        text = await response.text()
    assert "probe-" not in text
    assert 'clientpress_events_dead_lettered_total{reason="malformed",type="other"}' in text
    assert 'clientpress_events_dead_lettered_total{reason="untrusted_sender",type="other"}' in text


async def test_an_owners_event_older_than_the_inbox_remembers_is_not_applied_again(
    stack: Stack, admin: Browser
) -> None:
    """Any user that may publish on the events exchange can declare a queue of its own that
    dead-letters into it, bind it to what it may read, and so send an event it saw back,
    as long after as it likes, with its owner's user_id intact (the broker checks user_id
    on the first publish only). Within INBOX_RETENTION_HOURS the inbox knows the id; after
    it, an identity.user.disabled of a person enabled since would take their portals
    away again. An owner's event older than the inbox remembers is refused."""
    prefix = stack.broker.bus_prefix
    client = await new_client(stack, admin)
    code, users = await api(admin, "GET", f"/api/v1/users?q={client.email}")
    assert code == 200, users
    user_id = users["items"][0]["id"]
    assert await access_rows(stack, user_id) == 1
    # What identity wrote eight days ago (a week is the default retention), as it arrives
    # again from such a queue: with identity's user_id, under its own routing key.
    event = forged("identity.user.disabled", {"user_id": user_id})
    event["occurred_at"] = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    identity = broker.broker_user(prefix, "identity")
    await publish_as(stack.broker.amqp_url_as("identity"), stack, "events", event, user_id=identity)

    async def dead() -> bool:
        return event["id"] in await dead_letter_ids(stack, "portals")

    await eventually(dead, "the replayed event in portals' dead-letter queue")
    assert await access_rows(stack, user_id) == 1
    assert logged(stack["portals"], "event_stale", event["id"])


async def test_an_internal_key_routed_in_through_an_integrations_own_exchange_is_refused(
    stack: Stack, admin: Browser
) -> None:
    """Topic permissions are checked where a message is published, not where it is routed
    on: an integration's own exchange, bound to the events exchange or naming it as its
    alternate exchange, carries any routing key there and into the services' queues. The
    broker can't refuse it (the same write permission lets the integration publish its
    command); the consumer does, by the sender the broker vouches for."""
    prefix = stack.broker.bus_prefix
    user = stack.broker.integration_user
    portal_id = await new_portal(admin)
    data = forged_data("portal.updated", portal_id, str(uuid.uuid4()), unique_email())
    bound, alternate = forged("portal.updated", data), forged("portal.updated", data)
    connection = await aio_pika.connect(stack.broker.integration_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(f"{prefix}.events", ensure=False)
        fanout = await own_fanout_into(channel, events, user)
        other = await channel.declare_exchange(
            f"{user}.ae-{uuid.uuid4().hex[:6]}",
            aio_pika.ExchangeType.DIRECT,
            auto_delete=True,
            arguments={"alternate-exchange": f"{prefix}.events"},
        )
        for exchange, event in ((fanout, bound), (other, alternate)):
            await exchange.publish(
                aio_pika.Message(orjson.dumps(event), message_id=event["id"], user_id=user),
                routing_key="portal.updated",
                timeout=10,
            )
    finally:
        await connection.close()

    async def dead() -> bool:
        return {bound["id"], alternate["id"]} <= await dead_letter_ids(stack, "invitations")

    await eventually(dead, "both in invitations' dead-letter queue")
    for event in (bound, alternate):
        assert logged(stack["invitations"], "event_sender_refused", event["id"])
    # Invitations' copy of the portal is still Active: it still takes invitations.
    code, body = await api(
        admin, "POST", f"/api/v1/portals/{portal_id}/invitations", {"email": unique_email()}
    )
    assert code == 201, body


async def test_an_unreadable_announcement_from_anyone_but_its_owner_leaves_the_cache_alone(
    stack: Stack,
) -> None:
    """A gateway forgets every cached session and portal when an announcement it can't
    read arrives (it can't tell what changed). Any user that may write on the events
    exchange can route one into every replica's queue (an exchange of its own, bound to
    the events exchange): sent again and again, the cache was off for everyone. An
    unreadable message is a reason to forget only when its owner's user sent it."""
    message_id = str(uuid.uuid4())
    gateway = stack["gateway"]
    start = len(log_lines(gateway))
    await routed_in(stack, b"not json", "identity.session.revoked", message_id=message_id)

    await eventually_logged(
        gateway,
        "event_sender_refused",
        message_id,
        after=start,
        what="the gateway to refuse the unreadable announcement",
    )
    assert not logged(gateway, "gateway_cache_announcement_unreadable", after=start)
