"""A service started while PostgreSQL is unreachable (the database's pod not up yet, a
network policy missing, the wrong host): it waits for it, within a bound, and says so.

Kubernetes' probes read the management port: while the service waits, ``/healthz``
answers that the process is alive and ``/readyz`` answers 503 naming why the database
is not there, and each retry is logged with that reason. Before, nothing listened on the
management port until the database answered: the startup and liveness probes failed with
"connection refused" and the kubelet restarted the container, and nobody saw why."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from libs.common.web import _retry
from tests.faults.support import record, wait_until
from tests.support.env import TestEnv, free_port, new_test_env, provisioned
from tests.support.processes import ServiceProcess, run_migrations
from tests.support.proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture
async def own_env() -> AsyncIterator[TestEnv]:
    async with provisioned(new_test_env()) as env:
        yield env


async def _get(url: str) -> tuple[int, Any] | None:
    """The status and JSON body, or None while nothing answers."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.json()
    except aiohttp.ClientError:
        return None


def _retries(service: ServiceProcess) -> list[dict[str, Any]]:
    lines = service.log_path.read_text(errors="replace").splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    return [
        e
        for e in entries
        if e.get("event") == "dependency_not_ready" and e.get("dependency") == "database"
    ]


async def test_a_service_started_while_the_database_is_unreachable_says_why_and_stays_alive(
    own_env: TestEnv,
) -> None:
    db = urlsplit(own_env.database_url)
    proxy = TcpProxy(db.hostname or "127.0.0.1", db.port or 5432)  # not started: unreachable
    through_proxy = db._replace(netloc=f"{db.netloc.rsplit(':', 1)[0]}:{proxy.port}")
    await asyncio.to_thread(run_migrations, own_env.service_env(), ("portals",))
    service = ServiceProcess(
        "portals", free_port(), own_env.service_env(DATABASE_URL=through_proxy.geturl())
    )
    service.start()
    try:

        async def retried_twice() -> bool:
            return len(_retries(service)) >= 2

        await wait_until(retried_twice, 60, "portals to log its retries")

        async def answered() -> bool:
            return await _get(service.management_url + "/healthz") is not None

        try:
            await wait_until(answered, 30, "/healthz to answer while portals waits")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; portals' log: {service.log_tail(5)}") from None
        health = await _get(service.management_url + "/healthz")
        ready = await _get(service.management_url + "/readyz")
        retries = _retries(service)
        alive = service.proc is not None and service.proc.poll() is None

        await proxy.start()
        await service.wait_ready()
        record(
            "started_while_database_unreachable",
            healthz=health,
            readyz=ready,
            retries_logged=len(retries),
            reason=retries[-1].get("reason"),
        )
        assert alive
        assert health is not None and health[0] == 200, health
        assert ready is not None and ready[0] == 503, ready
        # The connection's own words: "ConnectionRefusedError: [Errno 111] Connection refused".
        assert ready[1]["checks"]["database"].startswith("ConnectionRefusedError: "), ready
        assert all(e.get("reason", "").startswith("ConnectionRefusedError: ") for e in retries), (
            retries
        )
    finally:
        await asyncio.to_thread(service.stop)
        await proxy.cut()


async def test_the_start_gives_up_on_a_dependency_after_its_bound_and_says_why() -> None:
    """The bound (``START_ATTEMPTS``, about two minutes) here at two tries: the last
    failure is raised (the process exits), and ``/readyz``'s reason is the last try's,
    a URL's password masked."""
    waits: dict[str, str] = {}

    async def refused() -> None:
        raise OSError("could not connect to postgresql://portals:pgS3cret@db:5432/cp")

    with pytest.raises(OSError):
        await _retry("database", refused, attempts=2, waits=waits)
    assert waits == {
        "database": "OSError: could not connect to postgresql://portals:[redacted]@db:5432/cp"
    }
