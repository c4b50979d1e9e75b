"""Connections held open by a hostile client: the room a service has for them."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import aiohttp
import pytest

from tests.support.env import TestEnv, free_port
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.integration

# What a shell (Debian's default) or a container (Docker 25 and later) starts a process
# with, scaled down so the test needs few connections: the soft limit, under a hard one.
STARTED_WITH = 256
HELD = 2 * STARTED_WITH


def _open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files line in /proc/{pid}/limits")


async def test_connections_held_open_by_one_client_leave_room_for_everyone_else(
    migrated_schemas: TestEnv,
) -> None:
    """Each connection is a file descriptor. A gateway started under the usual soft limit
    of 1,024 was out of them once one client held a thousand connections open (a request
    line, then nothing: aiohttp waits 75 s for the rest), and a person's request was reset.
    Services now raise the soft limit to the hard one at start, as Go's runtime does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 4 * HELD, f"this machine's hard limit ({hard}) is too low to show it"
    service = ServiceProcess("gateway", free_port(), migrated_schemas.service_env())
    resource.setrlimit(resource.RLIMIT_NOFILE, (STARTED_WITH, hard))  # the service inherits it
    try:
        service.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    held: list[asyncio.StreamWriter] = []
    try:
        await service.wait_ready()
        assert service.proc is not None
        assert _open_files_limits(service.proc.pid) == (hard, hard)
        for _ in range(HELD):
            _, writer = await asyncio.open_connection("127.0.0.1", service.port)
            writer.write(b"GET /login HTTP/1.1\r\nHost: clientpress\r\n")
            held.append(writer)
        await asyncio.gather(*(writer.drain() for writer in held))
        async with (
            aiohttp.ClientSession() as session,
            session.get(service.url + "/login") as response,
        ):
            assert response.status == 200
    finally:
        for writer in held:
            writer.close()
        await asyncio.to_thread(service.stop)
