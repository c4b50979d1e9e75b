"""Work an app repeats on a schedule (pruning, sweeps, gauges), in a task the app owns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from aiohttp import web

from .logging import get_logger

log = get_logger(__name__)


def periodic(
    name: str, every: float, work: Callable[[web.Application], Awaitable[object]]
) -> Callable[[web.Application], AbstractAsyncContextManager[None]]:
    """A cleanup context running ``work`` every ``every`` seconds in a task the app owns;
    a failed round (the database away for a moment) is logged and the next one tries
    again. The task is cancelled and awaited on shutdown."""

    async def loop(app: web.Application) -> None:
        while True:
            try:
                await work(app)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("periodic_task_failed", task=name, error=type(exc).__name__)
            await asyncio.sleep(every)

    @contextlib.asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(app), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx
