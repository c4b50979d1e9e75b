"""The events exchange deleted and declared again BY HAND (as in test_exchange_recreated),
seen from the gateways' caches: each replica's own listening queue lost its bindings
with the old exchange, so no announcement reached it any more. A log-out or a disabled
user on one gateway was then forgotten by the other only when its copy aged out
(``GATEWAY_CACHE_SECONDS``), for as long as the gateway ran, where the README promises
within a second.

Each gateway binds its queue again every ``BINDINGS_CHECK_SECONDS`` (10 s), as the
consuming services do: a log-out through one gateway is forgotten by the other within a
second again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest

from libs.common.bus import BINDINGS_CHECK_SECONDS
from tests.e2e.test_replicas import cache_hits, direct_get, signed_in
from tests.faults.support import record
from tests.support.processes import ServiceProcess
from tests.support.stack import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Browser,
    Replicas,
    replicas_behind_a_proxy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# Long enough that only an announcement explains a gateway forgetting within a second.
CACHE_SECONDS = 60
# How long after the declare by hand the gateways must listen again: a check or two.
HEALED_WITHIN = 4 * BINDINGS_CHECK_SECONDS


@pytest.fixture
async def replicas() -> AsyncIterator[Replicas]:
    async with replicas_behind_a_proxy(
        GATEWAY_TRUSTED_PROXIES="127.0.0.1/32", GATEWAY_CACHE_SECONDS=str(CACHE_SECONDS)
    ) as (stack, _):
        yield stack


async def _forgotten_within_a_second(first: ServiceProcess, second: ServiceProcess) -> bool:
    """An administrator logs in on ``first``; ``second`` caches the session; the session is
    logged out on ``first``. Whether ``second`` forgot it within a second."""
    browser = Browser(first.url)
    try:
        _, url, html = await browser.get("/login")
        status, url, html = await browser.submit(
            url, html, "Log In", {"Email": ADMIN_EMAIL, "Password": ADMIN_PASSWORD}
        )
        assert status == 200, (status, url, html[:500])
        token = next(c.value for c in browser.session.cookie_jar if c.key == "cp_session")
        hits = await cache_hits(second, "session")
        for _ in range(2):
            assert await signed_in(second, token)
        assert await cache_hits(second, "session") > hits, "the second gateway did not cache"
        status, url, html = await browser.submit(url, html, "Log out")
        assert status == 200 and "/login" in url, (status, url)
        assert (await direct_get(first, "/client-portal/", token))[0] in (302, 303)
        since = time.monotonic()
        while time.monotonic() - since < 1.0:
            if not await signed_in(second, token):
                return True
            await asyncio.sleep(0.05)
        return False
    finally:
        await browser.close()


async def test_the_gateways_listen_again_after_the_events_exchange_is_declared_by_hand(
    replicas: Replicas,
) -> None:
    first, second = replicas["gateway"]
    assert await _forgotten_within_a_second(first, second), "before anything was done"

    exchange = f"{replicas.env['BUS_PREFIX']}.events"
    admin = await aio_pika.connect(replicas.broker.amqp_url)
    try:
        channel = await admin.channel()
        # As ``rabbitmqadmin declare exchange name=… type=topic durable=true`` does.
        await channel.exchange_delete(exchange)
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    finally:
        await admin.close()
    declared = time.monotonic()

    tries = 0
    while True:
        tries += 1
        if await _forgotten_within_a_second(first, second):
            break
        waited = time.monotonic() - declared
        assert waited < HEALED_WITHIN, (
            f"{waited:.1f} s after the declare by hand the second gateway still served a"
            f" logged-out session ({tries} tries); its log: {second.log_tail(8)}"
        )
        await asyncio.sleep(2)
    record(
        "gateway_cache_listens_again_after_exchange_declared_by_hand",
        seconds=round(time.monotonic() - declared, 1),
        tries=tries,
    )
