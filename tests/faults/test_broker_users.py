"""A service's broker user changed under it, as a secret rotation or a provisioning slip
would: its password changed, its permissions on the vhost cleared; or the exchanges
missing, on a broker lost and not provisioned again. A service starting
meanwhile says in its log what the broker refused, keeps trying, and connects once the
user is put right."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from libs.common import broker
from libs.common.bus import Bus
from libs.common.provision import provision
from libs.common.web import _connect_patiently
from tests.support.env import TestEnv, drop_bus, free_port, new_test_env, provisioned
from tests.support.processes import ServiceProcess, run_migrations
from tests.support.servers import current as current_servers

pytestmark = [pytest.mark.integration]

SERVICE = "portals"


@pytest.fixture
async def own_env() -> AsyncIterator[TestEnv]:
    # Its own broker users: the ones changed here belong to no other test.
    async with provisioned(new_test_env()) as env:
        yield env


async def _rabbitmqctl(*args: str) -> None:
    await asyncio.to_thread(current_servers().rabbitmqctl, *args)


async def _refused_then_connected(
    env: TestEnv, put_right: Callable[[], Awaitable[None]]
) -> list[dict[str, Any]]:
    """Start connecting as the service's user (which the broker refuses), wait for the
    first refusal in the log, put the user right, and wait for the connection. Returns the
    refusals logged."""
    bus = Bus(env.amqp_url_as(SERVICE), env.bus_prefix, SERVICE)
    with capture_logs() as logs:
        connecting = asyncio.create_task(_connect_patiently(bus))
        try:

            def refusals() -> list[dict[str, Any]]:
                return [e for e in logs if e["event"] == "dependency_not_ready"]

            for _ in range(100):
                if refusals():
                    break
                await asyncio.sleep(0.1)
            assert refusals(), "the refused connection was never logged"
            await put_right()
            await asyncio.wait_for(connecting, 30)
            assert bus.ready
        finally:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
            await bus.close()
    assert any(e["event"] == "broker_connected" for e in logs)
    return refusals()


async def test_a_changed_password_is_named_and_the_restored_one_connects(
    own_env: TestEnv,
) -> None:
    user = broker.broker_user(own_env.bus_prefix, SERVICE)
    await _rabbitmqctl("change_password", "--", user, "rotated-elsewhere-0123456789")

    async def restore() -> None:
        # "--": a password may start with "-" (1 in 64 do), which rabbitmqctl took for an option
        await _rabbitmqctl("change_password", "--", user, own_env.broker_passwords[SERVICE])

    refusals = await _refused_then_connected(own_env, restore)
    reason = refusals[0]["reason"]
    assert "refused the login" in reason and user in reason, reason
    assert own_env.broker_passwords[SERVICE] not in str(refusals)


async def test_permissions_cleared_are_named_and_connects_once_granted_again(
    own_env: TestEnv,
) -> None:
    user = broker.broker_user(own_env.bus_prefix, SERVICE)
    vhost = broker.vhost_of(own_env.amqp_url)
    await _rabbitmqctl("clear_permissions", "-p", vhost, user)

    async def grant() -> None:
        g = broker.service_grant(own_env.bus_prefix, SERVICE)
        await _rabbitmqctl("set_permissions", "-p", vhost, user, g.configure, g.write, g.read)

    refusals = await _refused_then_connected(own_env, grant)
    reason = refusals[0]["reason"]
    # aiormq calls this an unexpected frame (InvalidFrameError): the log says what it is.
    assert "permissions on the vhost" in reason and user in reason, reason


async def test_a_broker_without_the_exchanges_is_named_and_connects_once_provisioned(
    own_env: TestEnv,
) -> None:
    # A broker lost with its definitions and restored without them, or one never
    # provisioned for this BUS_PREFIX: the users are there, the exchanges are not.
    await drop_bus(own_env)

    async def provision_again() -> None:
        await provision(
            own_env.amqp_url,
            own_env.bus_prefix,
            own_env.broker_passwords,
            {own_env.integration_user: own_env.integration_password},
        )

    refusals = await _refused_then_connected(own_env, provision_again)
    reason = refusals[0]["reason"]
    assert f"'{own_env.bus_prefix}.events'" in reason and "provision" in reason, reason


async def test_a_queue_refused_at_start_is_consumed_once_the_user_may(own_env: TestEnv) -> None:
    """Connected, then refused its queue (an upgrade started before the provisioning gave
    the service user the new release's queue, or a permission slip): the service's start
    gave up on the first refusal, and it served, said ready and never consumed an event
    again until restarted. It keeps trying, says why, and consumes once the user may."""
    user = broker.broker_user(own_env.bus_prefix, SERVICE)
    vhost = broker.vhost_of(own_env.amqp_url)
    grant = broker.service_grant(own_env.bus_prefix, SERVICE)
    # May connect, publish and read, but declare (configure) nothing.
    await _rabbitmqctl("set_permissions", "-p", vhost, user, "^$", grant.write, grant.read)
    env = own_env.service_env()
    await asyncio.to_thread(run_migrations, env, (SERVICE,))
    service = ServiceProcess(SERVICE, free_port(), env)
    service.start()
    try:
        await service.wait_ready()

        async def logged(text: str) -> bool:
            return text in service.log_path.read_text(errors="replace")

        await _until(lambda: logged("ACCESS_REFUSED"), "the broker's refusal of the queue")
        status, body = await _readyz(service)
        assert body["checks"]["consumer"] == "starting", body
        await _rabbitmqctl(
            "set_permissions", "-p", vhost, user, grant.configure, grant.write, grant.read
        )

        async def consuming() -> bool:
            return (await _readyz(service))[1]["checks"]["consumer"] == "ok"

        await _until(consuming, "the consumer to start once the queue is allowed")
        assert await logged('"consumer_not_started"') and await logged('"consumer_started"')
    finally:
        await asyncio.to_thread(service.stop)


async def _readyz(service: ServiceProcess) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(service.management_url + "/readyz") as response,
    ):
        return response.status, await response.json()


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    """Poll ``check`` until it holds (a wait, never a timed assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.2)
