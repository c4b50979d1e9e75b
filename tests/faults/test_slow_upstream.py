"""One internal service that stops answering behind the gateway: the gateway's calls to
invitations go through a proxy (tests/support/proxy.py ``BlackHole``) that this module
switches, so that invitations accepts connections and answers nothing, as a service
wedged on a lock, a full disk or a paused node does. The other services are reached
directly: the routes that need only them must not wait on the one that hangs.

Only the gateway goes through the proxy: invitations itself, and every other service's
calls, are untouched."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.faults.support import Api, record, wait_until
from tests.support.env import free_port, new_test_env, provisioned
from tests.support.processes import ServiceProcess, run_migrations
from tests.support.proxy import BlackHole
from tests.support.smtp import SmtpSink
from tests.support.stack import API_KEY, ORDER, Stack, stack_env, started

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# More concurrent requests to the hanging service than the gateway's pool of connections
# to its upstreams held (100): a busy integration retrying, staff reloading Invitations.
HANGING = 120
# The gateway gives up on an internal call after 10 s (libs/common/http.py new_session).
UPSTREAM_TIMEOUT = 10.0
CLIENT_TIMEOUT = 40.0
# Requests to each route served by identity or portals while invitations hangs.
OTHERS = 4


@pytest.fixture(scope="module")
async def hole() -> AsyncIterator[BlackHole]:
    proxy = BlackHole("127.0.0.1", 0)
    yield proxy
    proxy.restore()
    await proxy.stop()


@pytest.fixture(scope="module")
async def stack(sink: SmtpSink, hole: BlackHole) -> AsyncIterator[Stack]:
    """The whole stack, the gateway reaching invitations through ``hole``."""
    async with provisioned(new_test_env()) as test_env:
        ports = {name: free_port() for name in ORDER}
        public_url = f"http://127.0.0.1:{ports['gateway']}"
        env = stack_env(test_env, sink, public_url, ports, {})
        await asyncio.to_thread(run_migrations, env, ORDER)
        hole.target = ("127.0.0.1", ports["invitations"])
        await hole.start()
        gateway_env = {**env, "INVITATIONS_URL": f"http://127.0.0.1:{hole.port}"}
        services = {
            name: ServiceProcess(name, ports[name], gateway_env if name == "gateway" else env)
            for name in ORDER
        }
        async with started(list(services.values())):
            yield Stack(
                services, sink, public_url, env, test_env.database_url, test_env, test_env.keys
            )


async def _timed(session: aiohttp.ClientSession, path: str, base: str) -> tuple[Any, Any, float]:
    """Status (or the client's own error: a hang is TimeoutError), body and seconds."""
    started_at = time.monotonic()
    try:
        async with session.get(
            base + path, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        ) as response:
            body = await response.json(content_type=None)
            return response.status, body, round(time.monotonic() - started_at, 2)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return type(exc).__name__, None, round(time.monotonic() - started_at, 2)


async def test_one_hanging_service_leaves_the_others_answering(
    stack: Stack, hole: BlackHole
) -> None:
    """While invitations hangs under more concurrent requests than the gateway's pool
    holds, the routes served by identity and portals answer at once; the hanging ones get
    a JSON 503 within the gateway's bound, never a hang or a 500; once invitations answers
    again the same routes work, without a restart."""
    api = Api(stack)
    # The test's own client may hold every request open at once.
    clients = aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {API_KEY}"},
        connector=aiohttp.TCPConnector(limit=0),
    )
    try:
        portal = await api.create_portal("Slow upstream")
        invitations_path = f"/api/v1/invitations?portal_id={portal['id']}"
        assert (await api.call("GET", invitations_path))[0] == 200
        assert (await api.call("GET", "/api/v1/users"))[0] == 200

        hole.swallow()
        hanging = [
            asyncio.create_task(_timed(clients, invitations_path, stack.public_url))
            for _ in range(HANGING)
        ]
        await wait_until(
            lambda: _at_least(hole, HANGING // 2), 10, "the gateway's calls in the hole"
        )
        held = hole.silent
        # Routes that never touch invitations, several at once (one alone may find an
        # idle connection kept from before): identity's users, portals' portals.
        others = await asyncio.gather(
            *(
                _timed(clients, path, stack.public_url)
                for path in ("/api/v1/users", f"/api/v1/portals/{portal['id']}", "/api/v1/portals")
                for _ in range(OTHERS)
            )
        )
        answers = await asyncio.gather(*hanging)
        hole.restore()

        statuses = Counter(str(status) for status, _, _ in answers)
        codes = Counter(
            body["error"]["code"] for status, body, _ in answers if isinstance(body, dict)
        )
        slowest = max(seconds for _, _, seconds in answers)
        back = await wait_until(
            lambda: _answers(api, invitations_path), 20, "invitations through the gateway again"
        )
        record(
            "slow_upstream",
            hanging=HANGING,
            connections_in_hole=held,
            hanging_statuses=dict(statuses),
            hanging_codes=dict(codes),
            hanging_slowest_seconds=slowest,
            others_statuses=dict(Counter(str(status) for status, _, _ in others)),
            others_slowest_seconds=max(seconds for _, _, seconds in others),
            back_seconds=back,
        )
        for status, body, seconds in others:
            assert status == 200, (status, body, seconds)
            assert seconds < 3.0, (status, seconds)
        assert statuses == Counter({"503": HANGING}), statuses
        # The gateway's own words: "This page is temporarily unavailable", with Retry-After.
        assert set(codes) == {"unavailable"}, codes
        assert slowest < UPSTREAM_TIMEOUT + 3.0, slowest
    finally:
        hole.restore()
        await clients.close()
        await api.close()


async def _at_least(hole: BlackHole, count: int) -> bool:
    return hole.silent >= count


async def _answers(api: Api, path: str) -> bool:
    status, _ = await api.call("GET", path)
    return status == 200
