"""Accept: the full client flow (open the emailed link = the Set Password form, POST the
password, follow the redirect to the first portal page), sequential and concurrent."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
from yarl import URL

from tests.support.forms import find_form
from tests.support.smtp import accept_link

from .ceilings import argon2_ceiling
from .stack import Stack
from .stats import latency_summary

PASSWORD = "a-long-client-password-7"
CONCURRENCY = 8
TARGET_OVER_HASH_MS = 40.0


async def wait_for_link(stack: Stack, email: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = stack.sink.find(email)
        if message is not None:
            return accept_link(message)
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no invitation email for {email}")


async def invited_links(stack: Stack, portal_id: str, count: int, tag: str) -> list[str]:
    emails = [f"{tag}-{i}@example.com" for i in range(count)]
    for email in emails:
        await stack.invite(portal_id, email)
    return [await wait_for_link(stack, email) for email in emails]


async def accept_flow(link: str) -> tuple[float, aiohttp.ClientSession, str]:
    """Walk the flow in a fresh cookie-keeping session; returns the elapsed seconds, the
    (logged-in) session and the portal page URL. The caller closes the session."""
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    t0 = time.perf_counter()
    async with session.get(link) as response:
        page_url, html = str(response.url), await response.text()
    form = find_form(html, "Set Password")
    data = form.fill({"Password": PASSWORD, "Confirm Password": PASSWORD})
    url = str(URL(page_url).join(URL(form.action or page_url)))
    async with session.request(form.method.upper(), url, data=data) as response:
        await response.read()
        final_url, status = str(response.url), response.status
    elapsed = time.perf_counter() - t0
    if status != 200 or "/client-portal/" not in final_url:
        await session.close()
        raise RuntimeError(f"accept ended at {status} {final_url}")
    return elapsed, session, final_url


async def _timed(link: str) -> float:
    elapsed, session, _ = await accept_flow(link)
    await session.close()
    return elapsed


async def run(stack: Stack, quick: bool) -> list[dict[str, Any]]:
    sequential_n = 5 if quick else 30
    concurrent_n = CONCURRENCY * (1 if quick else 4)
    tag = f"accept-{uuid.uuid4().hex[:6]}"
    portal = await stack.create_portal(f"Accept bench {tag}")
    links = await invited_links(stack, portal["id"], 1 + sequential_n + concurrent_n, tag)
    await _timed(links[0])  # warm-up
    ceiling = await asyncio.to_thread(argon2_ceiling)
    sequential = [await _timed(link) for link in links[1 : 1 + sequential_n]]

    rest = links[1 + sequential_n :]
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def limited(link: str) -> float:
        async with semaphore:
            return await _timed(link)

    concurrent = await asyncio.gather(*(limited(link) for link in rest))
    hash_ms = ceiling["hash_p50_ms"]
    results: list[dict[str, Any]] = [{"bench": "accept", "case": "ceiling_argon2id", **ceiling}]
    for case, times, conc in (
        ("sequential", sequential, 1),
        ("concurrent", concurrent, CONCURRENCY),
    ):
        summary = latency_summary(times, 50, 99)
        results.append(
            {
                "bench": "accept",
                "case": case,
                "concurrency": conc,
                "flows": len(times),
                **summary,
                "hash_ms": hash_ms,
                "p50_over_hash_ms": round(summary["p50_ms"] - hash_ms, 2),
                "p50_ratio_to_hash": round(summary["p50_ms"] / hash_ms, 2) if hash_ms else 0.0,
                "target_over_hash_ms": TARGET_OVER_HASH_MS,
            }
        )
    return results
