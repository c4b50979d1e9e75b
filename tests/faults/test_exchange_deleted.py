"""What an operator deletes on the broker while the services run: the bus's public
exchange (a clean-up by hand, a wrong definitions import), then provisioned again; the
mailer's queue; the invitations user's right to publish.

The exchange takes the queues' bindings with it. Invitations made meanwhile wait in the
outbox, the relay says why, and once the exchange is back every email goes, each once;
nothing is dead-lettered.

The broker closes the channel a publish to a missing exchange was sent on, and aio-pika's
robust channel, reopening it, declares the exchange again (passively), is refused, and
stays closed: the relay failed every publish with "RobustChannel … closed" long after
the exchange was back, and no email went until the service was restarted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aio_pika
import pytest

from libs.common import broker
from libs.common.provision import provision
from tests.faults.support import (
    Api,
    all_delivered,
    dead_letters,
    outbox_backlog,
    outboxes_drained,
    per_address,
    record,
    unique_emails,
    wait_until,
)
from tests.support.servers import current as current_servers
from tests.support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def _provision_again(stack: Stack) -> None:
    env = stack.broker
    await provision(
        env.amqp_url,
        env.bus_prefix,
        env.broker_passwords,
        {env.integration_user: env.integration_password},
    )


async def _as_broker_administrator(
    stack: Stack, act: Callable[[aio_pika.abc.AbstractChannel], Awaitable[object]]
) -> None:
    """What an operator does by hand on the broker, as its administrator."""
    admin = await aio_pika.connect(stack.broker.amqp_url)
    try:
        await act(await admin.channel())
    finally:
        await admin.close()


async def _delivered(stack: Stack, emails: list[str], service: str, lines: int) -> None:
    """Every email delivered within 60 s, or fail with the outboxes and ``service``'s last
    log lines."""
    try:
        await all_delivered(stack, emails, timeout=60)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; outboxes: {await outbox_backlog(stack)};"
            f" {service}'s log: {stack[service].log_tail(lines)}"
        ) from None


async def test_the_events_exchange_deleted_then_provisioned_again(stack: Stack) -> None:
    api = Api(stack)
    exchange = f"{stack.env['BUS_PREFIX']}.events"
    try:
        portal = await api.create_portal("Exchange deleted")
        before = unique_emails("exch-before", 1)
        await api.invite(portal["id"], before[0])
        await all_delivered(stack, before, timeout=30)

        await _as_broker_administrator(stack, lambda channel: channel.exchange_delete(exchange))
        try:
            during = unique_emails("exch-during", 3)
            for email in during:
                await api.invite(portal["id"], email)

            async def waiting() -> bool:
                return (await outbox_backlog(stack))["invitations"] > 0

            await wait_until(waiting, 30, "the invitations to wait in the outbox")
            await asyncio.sleep(3)
            backlog = await outbox_backlog(stack)
            said = stack["invitations"].log_tail(100)
        finally:
            await _provision_again(stack)

        after = unique_emails("exch-after", 1)
        await api.invite(portal["id"], after[0])
        await _delivered(stack, [*during, *after], "invitations", 1)
        await outboxes_drained(stack)
        dead = await dead_letters(stack)
        counts = per_address(stack, [*before, *during, *after])
        record(
            "events_exchange_deleted",
            backlog_while_deleted=backlog,
            dead_lettered=dead,
            relay_log="outbox_relay_retry" in stack["invitations"].log_tail(400),
        )
        # The relay says what the broker refused, in its words.
        assert f"NOT_FOUND - no exchange '{exchange}'" in said, said[-1000:]
        assert dead == dict.fromkeys(dead, 0)
        assert all(n == 1 for n in counts.values()), counts
    finally:
        await api.close()


async def test_the_mailers_queue_deleted_by_an_operator(stack: Stack) -> None:
    """``rabbitmqctl delete_queue <prefix>.mailer`` while the services run: what it held is
    gone with it (the operator's doing), but the mailer declares and binds its queue again,
    and the invitations made afterwards are emailed, each once."""
    api = Api(stack)
    queue = f"{stack.env['BUS_PREFIX']}.mailer"
    try:
        portal = await api.create_portal("Queue deleted")
        before = unique_emails("queue-before", 1)
        await api.invite(portal["id"], before[0])
        await all_delivered(stack, before, timeout=30)

        await _as_broker_administrator(stack, lambda channel: channel.queue_delete(queue))
        after = unique_emails("queue-after", 3)
        for email in after:
            await api.invite(portal["id"], email)
        await _delivered(stack, after, "mailer", 3)
        await outboxes_drained(stack)
        dead = await dead_letters(stack)
        counts = per_address(stack, [*before, *after])
        record("mailer_queue_deleted", dead_lettered=dead)
        assert dead == dict.fromkeys(dead, 0)
        assert all(n == 1 for n in counts.values()), counts
    finally:
        await api.close()


async def test_the_invitations_users_write_permission_taken_then_given_back(
    stack: Stack,
) -> None:
    """``rabbitmqctl set_permissions`` takes the invitations user's right to publish while
    it runs (a provisioning slip, a security clamp-down), then gives it back: its events
    wait in the outbox meanwhile, the relay says what the broker refused, and they go
    once it may publish again, each email once."""
    api = Api(stack)
    prefix = stack.env["BUS_PREFIX"]
    grant = broker.service_grant(prefix, "invitations")
    vhost = broker.vhost_of(stack.broker.amqp_url)
    servers = current_servers()

    def permissions(write: str) -> None:
        servers.rabbitmqctl(
            "set_permissions", "-p", vhost, grant.user, grant.configure, write, grant.read
        )

    try:
        portal = await api.create_portal("Write permission taken")
        await asyncio.to_thread(permissions, "^$")
        try:
            during = unique_emails("perm-during", 3)
            for email in during:
                await api.invite(portal["id"], email)

            async def refused() -> bool:
                return "ACCESS_REFUSED" in stack["invitations"].log_tail(100)

            await wait_until(refused, 30, "the relay to say the broker refused it")
            backlog = await outbox_backlog(stack)
        finally:
            await asyncio.to_thread(permissions, grant.write)
        after = unique_emails("perm-after", 1)
        await api.invite(portal["id"], after[0])
        await _delivered(stack, [*during, *after], "invitations", 1)
        await outboxes_drained(stack)
        dead = await dead_letters(stack)
        counts = per_address(stack, [*during, *after])
        record("write_permission_taken", backlog_while_refused=backlog, dead_lettered=dead)
        assert dead == dict.fromkeys(dead, 0)
        assert all(n == 1 for n in counts.values()), counts
    finally:
        await asyncio.to_thread(permissions, grant.write)
        await api.close()
