"""An exchange of the bus deleted, then declared again BY HAND before any service or the
provisioning does (``rabbitmqadmin declare exchange``, another program's declare, a
definitions import that holds the exchanges but not the bindings): the exchange is back,
but the queues' bindings went with the old one. The broker takes every publish and
routes it nowhere: a mandatory one comes back (``Unroutable``: it stays in the outbox,
tried again and again), any other is dropped.

The consuming services bind their queues again by themselves (``Bus``'s binding keeper,
``BINDINGS_CHECK_SECONDS``): every email goes, each once, every outbox drains, nothing
is dead-lettered. Before, nothing bound them again until a service was restarted or the
broker provisioned again: the outboxes kept the returned events for good."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aio_pika
import pytest

from tests.faults.support import (
    Api,
    all_delivered,
    dead_letters,
    outbox_backlog,
    per_address,
    record,
    unique_emails,
    wait_until,
)
from tests.faults.test_exchange_deleted import _as_broker_administrator, _provision_again
from tests.support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _drained(stack: Stack) -> Callable[[], Awaitable[bool]]:
    async def empty() -> bool:
        return sum((await outbox_backlog(stack)).values()) == 0

    return empty


@pytest.mark.parametrize("kind", ["events", "mail"])
async def test_an_exchange_deleted_and_declared_again_by_hand(stack: Stack, kind: str) -> None:
    api = Api(stack)
    exchange = f"{stack.env['BUS_PREFIX']}.{kind}"
    try:
        portal = await api.create_portal(f"Exchange {kind} declared by hand")
        before = unique_emails(f"recreated-{kind}-before", 1)
        await api.invite(portal["id"], before[0])
        await all_delivered(stack, before, timeout=30)

        async def by_hand(channel: aio_pika.abc.AbstractChannel) -> None:
            # As ``rabbitmqadmin declare exchange name=… type=topic durable=true`` does.
            await channel.exchange_delete(exchange)
            await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)

        await _as_broker_administrator(stack, by_hand)
        after = unique_emails(f"recreated-{kind}-after", 3)
        for email in after:
            await api.invite(portal["id"], email)
        try:
            delivered = await all_delivered(stack, after, timeout=90)
            drained = await wait_until(_drained(stack), 90, "the outboxes to drain")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; outboxes: {await outbox_backlog(stack)};"
                f" invitations' log: {stack['invitations'].log_tail(2)}"
            ) from None
        await asyncio.sleep(1)  # a second copy of any email would have arrived by now
        dead = await dead_letters(stack)
        counts = per_address(stack, [*before, *after])
        record(
            f"{kind}_exchange_declared_again_by_hand",
            delivered_after_seconds=delivered,
            drained_after_seconds=drained,
            dead_lettered=dead,
        )
        assert dead == dict.fromkeys(dead, 0)
        assert all(n == 1 for n in counts.values()), counts
    finally:
        # Whatever happened, the next test finds the bindings (the provisioning's).
        await _provision_again(stack)
        await api.close()


async def test_the_services_say_which_bindings_they_cannot_make_then_that_they_made_them(
    stack: Stack,
) -> None:
    """The events exchange deleted, and declared again by hand only once the services
    have said they can't bind to it (``bindings_not_restored``, the broker's words): they
    say so once each, then ``bindings_restored``, and what was made meanwhile goes."""
    api = Api(stack)
    exchange = f"{stack.env['BUS_PREFIX']}.events"
    consumers = ("identity", "portals", "invitations")

    def said(event: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return all(
                event in line and exchange in line
                for line in (stack[name].log_tail(400) for name in consumers)
            )

        return check

    try:
        portal = await api.create_portal("Exchange gone, then declared by hand")
        await _as_broker_administrator(stack, lambda channel: channel.exchange_delete(exchange))
        during = unique_emails("unbound-during", 2)
        for email in during:
            await api.invite(portal["id"], email)
        await wait_until(said('"bindings_not_restored"'), 60, "each consumer to say so")

        async def by_hand(channel: aio_pika.abc.AbstractChannel) -> None:
            await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)

        await _as_broker_administrator(stack, by_hand)
        restored = await wait_until(said('"bindings_restored"'), 60, "the bindings restored")
        await all_delivered(stack, during, timeout=90)
        drained = await wait_until(_drained(stack), 90, "the outboxes to drain")
        not_restored = {
            name: [
                json.loads(line)["queue"]
                for line in stack[name].log_tail(1000).splitlines()
                if '"bindings_not_restored"' in line
            ]
            for name in consumers
        }
        dead = await dead_letters(stack)
        counts = per_address(stack, during)
        record(
            "events_exchange_gone_then_declared_by_hand",
            restored_after_seconds=restored,
            drained_after_seconds=drained,
            not_restored_lines=not_restored,
            dead_lettered=dead,
        )
        # Once per queue while the exchange was gone, not once per binding or check.
        assert all(len(set(q)) == len(q) for q in not_restored.values()), not_restored
        assert dead == dict.fromkeys(dead, 0)
        assert all(n == 1 for n in counts.values()), counts
    finally:
        await _provision_again(stack)
        await api.close()
