"""The queue limits the provisioning sets on the real broker (a policy per installation):
an integration publishing in a loop fills its one queue up to the bound and gets nacks
beyond it, instead of filling the broker until its alarm blocks every publisher; a
service's event refused there is reported as refused, not as unroutable."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from libs.common import broker
from libs.common.bus import Bus, Refused
from libs.common.provision import remove_limits, remove_users
from tests.support.servers import current as current_servers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BOUND = 20


@pytest.fixture
async def bounded() -> AsyncIterator[tuple[str, dict[str, str], str]]:
    """A prefix provisioned as an operator does (``python -m libs.common.provision
    provision``) with ``BROKER_QUEUE_MAX_MESSAGES`` set; removed afterwards."""
    amqp_url = current_servers().amqp_url
    prefix = f"cptest-limits-{uuid.uuid4().hex[:8]}"
    passwords = broker.new_passwords()
    integration, secret = f"{prefix}-crm", broker.new_passwords(["x"])["x"]
    env = {
        **os.environ,
        **{f"{s.upper()}_BROKER_PASSWORD": pw for s, pw in passwords.items()},
        "AMQP_URL": amqp_url,
        "BUS_PREFIX": prefix,
        "BROKER_INTEGRATIONS": f"{integration}={secret}",
        "BROKER_QUEUE_MAX_MESSAGES": str(BOUND),
    }
    done = subprocess.run(
        [sys.executable, "-m", "libs.common.provision", "provision"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        yield prefix, passwords, broker.with_credentials(amqp_url, integration, secret)
    finally:
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        for service in broker.CONSUMES:
            await channel.queue_delete(f"{prefix}.{service}")
            await channel.queue_delete(f"{prefix}.{service}.dead")
        for kind in ("events", "mail", "dlx"):
            await channel.exchange_delete(f"{prefix}.{kind}")
        await connection.close()
        await remove_limits(amqp_url, prefix)
        await remove_users(
            amqp_url, [broker.broker_user(prefix, s) for s in broker.SERVICES] + [integration]
        )


async def _flood(url: str, prefix: str, count: int) -> tuple[int, int]:
    """``count`` invitation.requested with publisher confirms: (acked, nacked)."""
    connection = await aio_pika.connect(url)
    acked = nacked = 0
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{prefix}.events", ensure=False)
        for _ in range(count):
            try:
                await exchange.publish(
                    aio_pika.Message(b"{}", user_id=broker.user_of(url)),
                    routing_key="invitation.requested",
                    timeout=10,
                )
                acked += 1
            except aio_pika.exceptions.DeliveryError:
                nacked += 1
    finally:
        await connection.close()
    return acked, nacked


async def _depth(prefix: str, queue: str) -> int:
    connection = await aio_pika.connect(current_servers().amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(f"{prefix}.{queue}", passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def test_a_flooding_integration_fills_only_its_queue_and_gets_nacks(
    bounded: tuple[str, dict[str, str], str],
) -> None:
    """Before: no bound; the 30 were all taken (and 50,000, and on until the broker's disk
    or memory alarm blocked every service's publishing). Then: bounded, but the requests
    filled the invitations service's one queue, and the services' own events for it (a
    portal changed, a delivery reported) were refused until the flood drained."""
    prefix, passwords, integration_url = bounded
    acked, nacked = await _flood(integration_url, prefix, BOUND + 10)
    # A quorum queue checks its bound before each message: the one that passes it is taken.
    assert acked in (BOUND, BOUND + 1) and acked + nacked == BOUND + 10
    assert await _depth(prefix, broker.REQUESTS_QUEUE) == acked
    assert await _depth(prefix, "invitations") == 0

    def as_service(service: str) -> Bus:
        url = broker.with_credentials(
            current_servers().amqp_url, broker.broker_user(prefix, service), passwords[service]
        )
        return Bus(url, prefix, service)

    async def publish(bus: Bus, event_type: str) -> None:
        await bus.publish(
            "events",
            event_type,
            b"{}",
            message_id=str(uuid.uuid4()),
            correlation_id=None,
            type=event_type,
        )

    # The invitations service's own events still go: the flood fills the requests' queue.
    portals, identity = as_service("portals"), as_service("identity")
    await portals.connect()
    await identity.connect()
    try:
        await publish(portals, "portal.updated")
        assert await _depth(prefix, "invitations") == 1
        # A service's event bound for a full queue is refused (the outbox keeps it and
        # tries again): identity.user.disabled goes to the portals' queue, bounded too.
        with pytest.raises(Refused, match="full"):
            for _ in range(BOUND + 2):
                await publish(identity, "identity.user.disabled")
    finally:
        await portals.close()
        await identity.close()
    assert await _depth(prefix, "portals") in (BOUND, BOUND + 1)


async def test_an_integration_flooding_a_queue_of_its_own_is_bounded_too(
    bounded: tuple[str, dict[str, str], str],
) -> None:
    """An integration may declare exchanges and queues named ``<its user>.…`` (queues
    server-named too), bind them together and publish there: a leaked password's loop
    aimed at a queue of its own instead of the events exchange filled the broker until
    its alarm blocked every service's publishing. Before: the policy bounded only the
    services' queues, and all 30 were taken."""
    prefix, _, integration_url = bounded
    user = broker.user_of(integration_url)
    connection = await aio_pika.connect(integration_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for name in (f"{user}.answers", ""):  # its own name, and a server-named one
            exchange = await channel.declare_exchange(
                f"{user}.loop", aio_pika.ExchangeType.FANOUT, auto_delete=True
            )
            queue = await channel.declare_queue(name, durable=bool(name), exclusive=not name)
            await queue.bind(exchange)
            policy = _policy_of(queue.name)
            if not name and policy != broker.limits_policy_name(prefix):
                # A server-named queue belongs to no installation: on a vhost that others
                # share (this run's other test stacks), one of their limits policies, of
                # the same priority, may be the one that applies. Bounded all the same.
                assert policy.endswith("-queue-limits"), (queue.name, policy)
                await queue.delete(if_unused=False, if_empty=False)
                continue
            acked = nacked = 0
            for _ in range(BOUND + 10):
                try:
                    await exchange.publish(
                        aio_pika.Message(b"{}", user_id=user), routing_key="", timeout=10
                    )
                    acked += 1
                except aio_pika.exceptions.DeliveryError:
                    nacked += 1
            await queue.delete(if_unused=False, if_empty=False)  # the exchange goes with it
            assert acked in (BOUND, BOUND + 1) and acked + nacked == BOUND + 10, (name, acked)
    finally:
        await connection.close()


def _policy_of(queue: str) -> str:
    """The policy that applies to ``queue`` on the run's broker ('' for none)."""
    listed = current_servers().rabbitmqctl("-q", "list_queues", "name", "policy")
    for line in listed.splitlines():
        found, _, policy = line.partition("\t")
        if found == queue:
            return policy.strip()
    raise AssertionError(f"no queue {queue} on the broker")
