"""The operations port (issue 14): /healthz, /readyz and /metrics answer on each service's
management port and nowhere else: every public port, the gateway's (what the Ingress
routes) included, answers 404 for them."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.support.stack import ORDER, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

OPERATIONS = ("/healthz", "/readyz", "/metrics")


async def test_operations_routes_live_only_on_the_management_port(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        for name in ORDER:
            service = stack[name]
            for path in OPERATIONS:
                # A 404, never a redirect to the log in page (which would tell that
                # something is there), nor the figures.
                async with session.get(service.url + path, allow_redirects=False) as response:
                    assert response.status == 404, (name, path, response.status)
                    assert "clientpress_" not in await response.text()
            async with session.get(service.management_url + "/healthz") as response:
                assert response.status == 200
                assert (await response.json())["service"] == name
            # The broker is reached in the background: ready at once, the broker "ok" soon.
            for _ in range(100):
                async with session.get(service.management_url + "/readyz") as response:
                    assert response.status == 200, await response.text()
                    checks = (await response.json())["checks"]
                consumers = [v for k, v in checks.items() if k.startswith("consumer")]
                if checks.get("broker", "ok") == "ok" and set(consumers) <= {"ok"}:
                    break
                await asyncio.sleep(0.1)
            if name != "gateway":  # the gateway has no outbox: its broker is only a cache's
                # Each of the four consumes its own queue; invitations the integrations'
                # requests apart too.
                apart = {"consumer:invitations.requests": "ok"} if name == "invitations" else {}
                assert checks == {
                    "database": "ok",
                    "schema": "ok",
                    "broker": "ok",
                    "consumer": "ok",
                    "listening": "ok",
                    **apart,
                }, name
            # The gateway's figure is its cache listener's connection: 0 would page someone
            # (deploy/monitoring/alerts.yml ClientPressBrokerDisconnected) for nothing.
            for _ in range(100):
                async with session.get(service.management_url + "/metrics") as response:
                    assert response.status == 200
                    text = await response.text()
                if "clientpress_broker_connected 1.0" in text:
                    break
                await asyncio.sleep(0.1)
            assert "clientpress_http_requests_total" in text
            assert "clientpress_broker_connected 1.0" in text, name
