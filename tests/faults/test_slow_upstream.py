"""Internal services that hang or answer slowly. The gateway's calls to invitations go
through a proxy (tests/support/proxy.py ``BlackHole``) that this module switches, so that
invitations accepts connections and answers nothing, as a service wedged on a lock, a
full disk or a paused node does: the routes that need only the other services must not
wait on it. Invitations' own calls to identity and portals go through proxies that answer
late (``SlowReplies``): a request that needs both must be answered, and nothing made,
before the gateway gives up on it.

Only those calls go through the proxies: every other service's are untouched."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.faults.support import Api, record, wait_until
from tests.support.env import free_port, new_test_env, provisioned
from tests.support.processes import ServiceProcess, run_migrations
from tests.support.proxy import BlackHole, SlowReplies
from tests.support.smtp import SmtpSink
from tests.support.stack import ADMIN_EMAIL, API_KEY, ORDER, Stack, db_fetch, stack_env, started

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# More concurrent requests to the hanging service than the gateway's pool of connections
# to its upstreams held (100): a busy integration retrying, staff reloading Invitations.
HANGING = 120
# The gateway gives up on an internal call after 10 s (libs/common/http.py new_session).
UPSTREAM_TIMEOUT = 10.0
CLIENT_TIMEOUT = 40.0
# Identity's and portals' answers to invitations this late: each within the 10 s of a
# call, the two an invitation to an address with an account needs not.
SLOW_ANSWER = 6.0
# Requests to each route served by identity or portals while invitations hangs.
OTHERS = 4


@pytest.fixture(scope="module")
async def hole() -> AsyncIterator[BlackHole]:
    proxy = BlackHole("127.0.0.1", 0)
    yield proxy
    proxy.restore()
    await proxy.stop()


@pytest.fixture(scope="module")
async def slow() -> AsyncIterator[dict[str, SlowReplies]]:
    proxies = {name: SlowReplies("127.0.0.1", 0) for name in ("identity", "portals")}
    yield proxies
    for proxy in proxies.values():
        await proxy.stop()


@pytest.fixture(scope="module")
async def stack(
    sink: SmtpSink, hole: BlackHole, slow: dict[str, SlowReplies]
) -> AsyncIterator[Stack]:
    """The whole stack, the gateway reaching invitations through ``hole``, invitations
    reaching identity and portals through ``slow``."""
    async with provisioned(new_test_env()) as test_env:
        ports = {name: free_port() for name in ORDER}
        public_url = f"http://127.0.0.1:{ports['gateway']}"
        env = stack_env(test_env, sink, public_url, ports, {})
        await asyncio.to_thread(run_migrations, env, ORDER)
        hole.target = ("127.0.0.1", ports["invitations"])
        await hole.start()
        for name, proxy in slow.items():
            proxy.target = ("127.0.0.1", ports[name])
            await proxy.start()
        own_env = {
            "gateway": {**env, "INVITATIONS_URL": f"http://127.0.0.1:{hole.port}"},
            "invitations": {
                **env,
                "IDENTITY_URL": f"http://127.0.0.1:{slow['identity'].port}",
                "PORTALS_URL": f"http://127.0.0.1:{slow['portals'].port}",
            },
        }
        services = {
            name: ServiceProcess(name, ports[name], own_env.get(name, env)) for name in ORDER
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


async def test_calls_in_turn_end_before_the_gateway_gives_up(
    stack: Stack, slow: dict[str, SlowReplies]
) -> None:
    """Identity and portals answer invitations 6 s late each; an invitation to an address
    with an account asks both. Invitations answers 503 itself before the gateway's 10 s,
    with nothing made, so the client's retry is safe; once they answer promptly the same
    invitation is made once."""
    api = Api(stack)
    try:
        portal = await api.create_portal("Slow calls in turn")
        path = f"/api/v1/portals/{portal['id']}/invitations"
        for proxy in slow.values():
            proxy.delay = SLOW_ANSWER
        started_at = time.monotonic()
        status, body = await api.call("POST", path, {"email": ADMIN_EMAIL})
        seconds = round(time.monotonic() - started_at, 2)
        # Whatever invitations was still doing has finished by now.
        await asyncio.sleep(2 * SLOW_ANSWER - seconds + 2)
        made = await _invitations_to(stack, portal["id"])
        for proxy in slow.values():
            proxy.delay = 0.0
        after, _ = await api.call("POST", path, {"email": ADMIN_EMAIL})
        record(
            "slow_calls_in_turn",
            answer_delay=SLOW_ANSWER,
            status=status,
            code=body["error"]["code"] if isinstance(body, dict) and "error" in body else None,
            seconds=seconds,
            made_while_slow=made,
            status_after=after,
            made_after=await _invitations_to(stack, portal["id"]),
        )
        assert (status, made) == (503, 0), (status, body, seconds, made)
        assert seconds < UPSTREAM_TIMEOUT, seconds
        assert after == 201
        assert await _invitations_to(stack, portal["id"]) == 1
    finally:
        for proxy in slow.values():
            proxy.delay = 0.0
        await api.close()


async def _invitations_to(stack: Stack, portal_id: str) -> int:
    rows = await db_fetch(
        stack,
        "SELECT count(*) AS n FROM invitations.invitations WHERE portal_id = $1",
        uuid.UUID(portal_id),
    )
    return int(rows[0]["n"])


async def _at_least(hole: BlackHole, count: int) -> bool:
    return hole.silent >= count


async def _answers(api: Api, path: str) -> bool:
    status, _ = await api.call("GET", path)
    return status == 200
