"""What an integration can do to the services through the broker, past the trust table: a
request of many megabytes is dead-lettered unread, with its reason and sender, instead of
being parsed into several hundred MB and acted on; a message the broker dead-letters by
itself (a publisher's short ``expiration``) shows in the service's metrics and log."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import orjson
import pytest

from libs.common import broker
from tests.faults.support import Api, metric, wait_until
from tests.security.flows import invitation_requested, publish_as
from tests.support.stack import Stack, db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def request(slug: str, email: str, **extra: Any) -> dict[str, Any]:
    data = {"portal_slug": slug, "email": email, "idempotency_key": uuid.uuid4().hex, **extra}
    return invitation_requested(data, f"limits-{uuid.uuid4().hex}")


async def publish_as_integration(stack: Stack, event: dict[str, Any], **props: Any) -> None:
    await publish_as(
        stack.broker.integration_url,
        stack,
        "events",
        event,
        ensure=False,
        timeout=30,
        user_id=stack.broker.integration_user,
        **props,
    )


async def dead_ids(stack: Stack, service: str) -> set[str]:
    connection = await aio_pika.connect(stack.broker.amqp_url)
    ids: set[str] = set()
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{stack.broker.bus_prefix}.{service}.dead")
        while (message := await queue.get(fail=False)) is not None:
            ids.add(message.message_id or "")
        await channel.close()  # unacknowledged: they go back
    finally:
        await connection.close()
    return ids


async def invitations_to(stack: Stack, email: str) -> int:
    rows = await db_fetch(
        stack, "SELECT count(*) AS n FROM invitations.invitations WHERE email = $1", email
    )
    return int(rows[0]["n"])


async def test_a_request_over_the_event_size_limit_is_dead_lettered_unread(
    stack: Stack, api: Api
) -> None:
    """Before: a 2 MiB invitation.requested (its padding an unknown field, ignored) was
    parsed whole and made an invitation; one of 100 MB took the invitations service from
    77 to 364 MiB of memory, over its Kubernetes limit of 256 MiB."""
    portal = await api.create_portal(f"Limits {uuid.uuid4().hex[:6]}")
    email = f"big-{uuid.uuid4().hex[:8]}@example.com"
    event = request(portal["slug"], email, padding="a" * (2 * 1024 * 1024))
    invitations = stack["invitations"]
    before = await metric(
        invitations.management_url,
        "clientpress_events_dead_lettered_total",
        type="invitation.requested",
        reason="too_large",
    )
    await publish_as_integration(stack, event)

    async def dead() -> bool:
        return event["id"] in await dead_ids(stack, "invitations.requests")

    await wait_until(dead, 30, "the oversized request in the dead-letter queue")
    assert await invitations_to(stack, email) == 0
    after = await metric(
        invitations.management_url,
        "clientpress_events_dead_lettered_total",
        type="invitation.requested",
        reason="too_large",
    )
    assert after == before + 1
    log = invitations.log_path.read_text(errors="replace")
    line = next(
        orjson.loads(line)
        for line in log.splitlines()
        if "event_too_large_dead_lettered" in line and event["id"] in line
    )
    assert line["sender"] == stack.broker.integration_user
    assert line["size"] > broker.MAX_EVENT_BYTES and line["limit"] == broker.MAX_EVENT_BYTES

    # A request at the limit's side of it still invites.
    email = f"fits-{uuid.uuid4().hex[:8]}@example.com"
    await publish_as_integration(stack, request(portal["slug"], email, note="a" * 100_000))

    async def invited() -> bool:
        return await invitations_to(stack, email) == 1

    await wait_until(invited, 30, "the invitation of a request under the limit")


async def test_what_the_broker_dead_letters_by_itself_is_counted_and_logged(
    stack: Stack, api: Api
) -> None:
    """Before: a request an integration sent with ``expiration: 1`` while the invitations
    service was away expired in its queue, and the broker moved it to the dead-letter
    queue: no service saw it, so no metric, log line or alert said so."""
    portal = await api.create_portal(f"Expiry {uuid.uuid4().hex[:6]}")
    invitations = stack["invitations"]
    queue = f"{stack.broker.bus_prefix}.invitations.requests.dead"
    invitations.stop()
    try:
        already = len(await dead_ids(stack, "invitations.requests"))
        event = request(portal["slug"], f"late-{uuid.uuid4().hex[:8]}@example.com")
        await publish_as_integration(stack, event, expiration=0.001)

        async def expired() -> bool:
            return event["id"] in await dead_ids(stack, "invitations.requests")

        await wait_until(expired, 30, "the expired request in the dead-letter queue")
    finally:
        invitations.start()
        await invitations.wait_ready()

    # Ready does not wait for the broker (the outbox keeps what is published meanwhile),
    # and the gauge is measured on the broker at each scrape: until the service is
    # connected a scrape can't say, and leaves the gauge out. Scrape as Prometheus would.
    async def counted() -> bool:
        waiting = await metric(
            invitations.management_url, "clientpress_dead_letters_waiting", queue=queue
        )
        return waiting == already + 1

    await wait_until(counted, 30, f"clientpress_dead_letters_waiting == {already + 1}")
    log = invitations.log_path.read_text(errors="replace")
    assert any(
        "dead_letters_waiting" in line and f'"messages":{already + 1}' in line.replace(" ", "")
        for line in log.splitlines()
    ), invitations.log_tail()
