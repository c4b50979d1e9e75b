"""Issue 9, fault 3: PostgreSQL stopped and started again under a burst of invitations.
While it is down the gateway answers 503 (JSON for the API, a page for the browser),
promptly and without a trace; the services recover without a restart and nothing is left
half-done.

This stops the shared PostgreSQL cluster for a few seconds: don't run it beside other
suites. The cluster is started again in ``finally``, whatever happens."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.faults.support import (
    Api,
    all_delivered,
    burst,
    dead_letters,
    deliveries_settled,
    outboxes_drained,
    per_address,
    record,
    unique_emails,
    wait_until,
)
from tests.support.servers import current as current_servers
from tests.support.stack import ADMIN_EMAIL, ADMIN_PASSWORD, Stack, login

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

BURST = 150


async def test_postgres_restarted_under_load(stack: Stack) -> None:
    api = Api(stack)
    admin = await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
    pids = {name: service.proc.pid for name, service in stack.services.items() if service.proc}
    probes: list[tuple[str, int, float]] = []
    try:
        portal = await api.create_portal("Postgres restart")
        emails = unique_emails("pg", BURST)
        invites = asyncio.create_task(burst(api, portal["id"], emails, concurrency=8))
        await wait_until(lambda: _started(api, BURST // 3, invites), 60, "a third of the burst")
        await asyncio.to_thread(current_servers().stop_postgres)
        stopped_at = time.monotonic()
        try:
            probes = await _probe_while_down(stack, api, admin)
        finally:
            await asyncio.to_thread(current_servers().start_postgres)
        down_for = round(time.monotonic() - stopped_at, 2)
        await invites
        await all_delivered(stack, emails, timeout=60)
        recovered = round(time.monotonic() - stopped_at, 2)
        await outboxes_drained(stack)
        await deliveries_settled(stack)
        status, _, html = await admin.get("/admin/portals")
        assert status == 200 and "Postgres restart" in html
        counts = per_address(stack, emails)
        duplicated = {a: n for a, n in counts.items() if n > 1}
        dead = await dead_letters(stack)
        record(
            "postgres_restart",
            invitations=BURST,
            emails_delivered=sum(counts.values()),
            addresses_delivered=len(counts),
            duplicated=len(duplicated),
            dead_lettered=sum(dead.values()),
            client_retries=dict(api.retries),
            probes_while_down=[{"path": p, "status": s, "seconds": t} for p, s, t in probes],
            seconds_down=down_for,
            seconds_from_stop_to_last_email=recovered,
        )
        assert len(counts) == BURST
        assert duplicated == {}
        # An outage is waited out, not counted against the messages in flight.
        assert dead == dict.fromkeys(dead, 0)
        # Recovered by themselves: the same processes still run.
        assert {n: s.proc.pid for n, s in stack.services.items() if s.proc} == pids
        assert all(s.proc is not None and s.proc.poll() is None for s in stack.services.values())
    finally:
        await asyncio.to_thread(current_servers().ensure_postgres_started)
        await admin.close()
        await api.close()


async def _started(api: Api, count: int, task: asyncio.Task[object]) -> bool:
    return api.invited >= count or task.done()


async def _probe_while_down(stack: Stack, api: Api, admin: object) -> list[tuple[str, int, float]]:
    """The API and an admin page, each answered 503 while the database is away."""
    from tests.support.stack import Browser

    assert isinstance(admin, Browser)
    results = []
    timeout = aiohttp.ClientTimeout(total=15)  # a hang fails here, not at a CI timeout
    for path in ("/api/v1/portals", "/api/v1/invitations"):
        started = time.monotonic()
        async with api.session.get(stack.public_url + path, timeout=timeout) as response:
            body = await response.json()
            results.append((path, response.status, round(time.monotonic() - started, 2)))
            assert response.status == 503, body
            assert set(body) == {"error"} and "unavailable" in body["error"]["code"], body
            assert response.headers.get("Retry-After"), dict(response.headers)
    started = time.monotonic()
    async with admin.session.get(stack.public_url + "/admin/invitations", timeout=timeout) as r:
        html = await r.text()
        results.append(("/admin/invitations", r.status, round(time.monotonic() - started, 2)))
        assert r.status == 503, html[:500]
        assert "Traceback" not in html and "asyncpg" not in html, html[:500]
    return results
