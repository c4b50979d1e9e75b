"""Group commit: many callers' small writes made as one.

Each caller awaits its own result, as if it wrote alone. While one write is in flight,
the callers that arrive queue up, and the next write takes all of them (up to
``max_batch``) in one statement. When the load is light every write holds one item and
costs what it did before; under load the round trips, statements and commits per item
fall with the queue's length, and nobody waits for a timer to fill a batch.

A write that raises fails every caller in its batch with the same exception (each
caller decides, as it would alone, whether to try again), unless ``redo_alone_if`` says
the failure may belong to one item (a value the database can't store, a handler that
raises): then each item of the batch is written alone, and each caller gets its own
answer or its own exception, so one bad item never fails its neighbours."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from .context import deadline_var
from .logging import get_logger

log = get_logger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """``await group(item)``: ``write(items)`` answers one result per item, in order."""

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch: int = 64,
        redo_alone_if: Callable[[Exception], bool] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self.max_batch = max_batch
        self._redo_alone_if = redo_alone_if
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        # Retrieved here, so a caller that gave up leaves no "never retrieved" warning.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._waiting.append((item, future))
        if self._writer is None:
            # The writer serves every caller that joins while it runs, so it runs on no
            # one's deadline (context.py time_left): the first caller's, inherited, would
            # fail the calls it makes for later callers once that one's caller gave up.
            context = contextvars.copy_context()
            context.run(deadline_var.set, None)
            self._writer = asyncio.create_task(self._drain(), name="group-commit", context=context)
        # Shielded: a caller that gives up (cancelled) leaves its item to the batch it
        # joined, as a single write already under way would be.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                try:
                    results = await self._write_all([item for item, _ in batch])
                except BaseException as exc:
                    if (
                        len(batch) > 1
                        and isinstance(exc, Exception)
                        and self._redo_alone_if is not None
                        and self._redo_alone_if(exc)
                    ):
                        log.info("group_write_split", items=len(batch), error=type(exc).__name__)
                        try:
                            await self._each_alone(batch)
                        except asyncio.CancelledError:
                            self._cancel(batch)
                            raise
                        continue
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        self._cancel([])
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._writer = None

    def _cancel(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        """Stopped mid-way: nobody is left to write for these callers, or those waiting."""
        for _, future in (*batch, *self._waiting):
            future.cancel()
        self._waiting.clear()

    async def _write_all(self, items: list[Item]) -> Sequence[Result]:
        results = await self._write(items)
        if len(results) != len(items):
            raise RuntimeError(
                f"group write answered {len(results)} results for {len(items)} items"
            )
        return results

    async def _each_alone(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        for item, future in batch:
            try:
                [result] = await self._write_all([item])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)
