"""Portal page: a logged-in client loading their portal page through the gateway, with 16
connections from a separate load process; ceiling: a bare aiohttp + asyncpg server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp

from tests.support.env import free_port
from tests.support.processes import ROOT, ServiceProcess

from .accept import accept_flow, invited_links
from .loadgen import run_load
from .stack import Stack
from .stats import ratio

CONNECTIONS = 16
TARGET_REQ_PER_S = 3000
TARGET_P99_MS = 25.0
CONTENT = "## Welcome\n\nYour project files, **timeline** and invoices live here.\n\n" + (
    "- A line of portal content with a [link](https://example.com).\n" * 20
)


async def _bare_server(database_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_server", database_url, str(port)], cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("the bare ceiling server did not start")


async def _uncached_gateway(stack: Stack) -> ServiceProcess:
    """A second gateway on the same services with its cache off: every page asks identity
    for the session and portals for the page, as before the cache."""
    base = stack.services["gateway"]
    gateway = ServiceProcess("gateway", free_port(), {**base.env, "GATEWAY_CACHE_SECONDS": "0"})
    gateway.log_path = gateway.log_path.with_name(gateway.log_path.stem + "-uncached.log")
    gateway.start()
    await gateway.wait_ready(60)
    return gateway


async def run(stack: Stack, quick: bool) -> list[dict[str, Any]]:
    duration = 2.0 if quick else 10.0
    tag = f"page-{uuid.uuid4().hex[:6]}"
    portal = await stack.create_portal(f"Portal bench {tag}", CONTENT)
    (link,) = await invited_links(stack, portal["id"], 1, tag)
    _, session, page_url = await accept_flow(link)
    cookies = "; ".join(f"{c.key}={c.value}" for c in session.cookie_jar)
    await session.close()

    gateway = await run_load(page_url, {"Cookie": cookies}, CONNECTIONS, duration)
    second = await _uncached_gateway(stack)
    try:
        uncached = await run_load(
            page_url.replace(stack.public_url, second.url),
            {"Cookie": cookies},
            CONNECTIONS,
            duration,
        )
    finally:
        second.stop()
    proc, bare_url = await _bare_server(stack.env.database_url)
    try:
        bare = await run_load(
            f"{bare_url}/client-portal/{portal['slug']}/", {}, CONNECTIONS, duration
        )
    finally:
        proc.terminate()
        proc.wait(10)
    return [
        {
            "bench": "portal",
            "case": "ceiling_bare_aiohttp_asyncpg",
            "connections": CONNECTIONS,
            "duration_s": duration,
            **bare,
        },
        {
            "bench": "portal",
            "case": "gateway",
            "connections": CONNECTIONS,
            "duration_s": duration,
            **gateway,
            "ceiling_req_per_s": bare["req_per_s"],
            "ratio": ratio(gateway["req_per_s"], bare["req_per_s"]),
            "target_req_per_s": TARGET_REQ_PER_S,
            "target_p99_ms": TARGET_P99_MS,
            "cache_seconds": float(stack.services["gateway"].env.get("GATEWAY_CACHE_SECONDS", 10)),
        },
        {
            "bench": "portal",
            "case": "gateway_uncached",
            "connections": CONNECTIONS,
            "duration_s": duration,
            **uncached,
            "ceiling_req_per_s": bare["req_per_s"],
            "ratio": ratio(uncached["req_per_s"], bare["req_per_s"]),
            "cache_seconds": 0.0,
        },
    ]
