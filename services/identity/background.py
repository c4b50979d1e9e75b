"""Work a request hands off to run after its answer, owned by the app: drained before the
pool closes, its failures logged (never its arguments: they may hold an email)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from libs.common.logging import get_logger

log = get_logger(__name__)


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def run(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        """Start ``work`` now, in the caller's context (its correlation id follows)."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("background_work_failed", work=task.get_name(), error=type(error).__name__)

    async def drain(self) -> None:
        """Wait until nothing handed off is still running (shutdown, and tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
