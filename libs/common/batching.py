"""Group commit: many callers' small writes made as one.

Each caller awaits its own result, as if it wrote alone. While one write is in flight,
the callers that arrive queue up, and the next write takes all of them (up to
``max_batch``) in one statement. When the load is light every write holds one item and
costs what it did before; under load the round trips, statements and commits per item
fall with the queue's length, and nobody waits for a timer to fill a batch.

A write that raises fails every caller in its batch with the same exception (each
caller decides, as it would alone, whether to try again)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """``await group(item)``: ``write(items)`` answers one result per item, in order."""

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch: int = 64,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self.max_batch = max_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        # Retrieved here, so a caller that gave up leaves no "never retrieved" warning.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name="group-commit")
        # Shielded: a caller that gives up (cancelled) leaves its item to the batch it
        # joined, as a single write already under way would be.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                try:
                    results = await self._write([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(
                            f"group write answered {len(results)} results for {len(batch)} items"
                        )
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        for _, future in self._waiting:
                            future.cancel()
                        self._waiting.clear()
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._writer = None
