"""An HTTP load client that runs in its own process, so it never shares the benchmark
process's CPU or event loop: N keep-alive connections GETting one URL for a while."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any

import aiohttp

from .stats import latency_summary, rate


async def _load(
    url: str, headers: dict[str, str], connections: int, duration: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        # Warm every connection before the clock starts.
        for _ in range(connections * 2):
            async with session.get(url, allow_redirects=False) as response:
                await response.read()
        stop = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    async with session.get(url, allow_redirects=False) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "req_per_s": rate(len(latencies), elapsed),
        **latency_summary(latencies, 50, 99),
        "errors": errors,
    }


def _child(url: str, headers: dict[str, str], connections: int, duration: float, out: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional
        pass
    out.send(asyncio.run(_load(url, headers, connections, duration)))
    out.close()


async def run_load(
    url: str, headers: dict[str, str], connections: int, duration: float
) -> dict[str, Any]:
    """Run the load client in a spawned process and return its summary."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(url, headers, connections, duration, send))
    proc.start()
    send.close()
    try:
        result: dict[str, Any] = await asyncio.to_thread(receive.recv)
    finally:
        await asyncio.to_thread(proc.join, duration + 60)
    return result
