"""Retention: rows a service no longer needs (an ended session, a sent email's record, an
old webhook delivery) are deleted in short batches, each its own statement, so no prune
holds locks for long; rows another replica is deleting at the same moment are skipped,
not waited for, so every replica may prune at once (docs/reliability.md "What is kept
and for how long")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from .db import Db
from .logging import get_logger
from .metrics import ROWS_PRUNED
from .tasks import periodic

log = get_logger(__name__)

PRUNE_BATCH = 1000
# Once an hour per replica: the rows only have to go within a day or so of their time.
PRUNE_EVERY_SECONDS = 3600.0


async def delete_in_batches(db: Db, table: str, where: str, *args: Any) -> int:
    """Delete the rows of ``table`` matching ``where`` (whose parameters are ``args``),
    ``PRUNE_BATCH`` at a time until none is left; returns how many went. ``table`` and
    ``where`` are the caller's literals, never input."""
    total = await _in_batches(db, f"DELETE FROM {table}", table, where, args)
    if total:
        ROWS_PRUNED.labels(table).inc(total)
    return total


async def clear_in_batches(db: Db, table: str, assignments: str, where: str, *args: Any) -> int:
    """``UPDATE table SET assignments`` on the rows matching ``where``, in batches as
    ``delete_in_batches``; ``where`` must no longer match a row once it is cleared (else
    this never ends). Returns how many rows were cleared."""
    return await _in_batches(db, f"UPDATE {table} SET {assignments}", table, where, args)


async def _in_batches(db: Db, head: str, table: str, where: str, args: tuple[Any, ...]) -> int:
    sql = (
        f"{head} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {where}"
        f" LIMIT ${len(args) + 1} FOR UPDATE SKIP LOCKED))"
    )
    total = 0
    while True:
        status = await db.execute(sql, *args, PRUNE_BATCH)
        done = int(status.split()[-1])
        total += done
        if done < PRUNE_BATCH:
            return total


def pruning(
    name: str, prune: Callable[[web.Application], Awaitable[Mapping[str, int]]]
) -> Callable[[web.Application], Any]:
    """A cleanup context running ``prune`` (which answers the rows deleted per table) once
    an hour in a task the app owns, with a ``rows_pruned`` log line when any went."""

    async def work(app: web.Application) -> None:
        pruned = {table: rows for table, rows in (await prune(app)).items() if rows}
        if pruned:
            log.info("rows_pruned", task=name, **pruned)

    return periodic(name, PRUNE_EVERY_SECONDS, work)
