"""SQL on the gateway's own schema: the rate-limit counters every replica shares."""

from __future__ import annotations

from libs.common.db import Db
from libs.common.retention import delete_in_batches


async def hit(db: Db, key: bytes, start: int, window: int) -> tuple[int, int]:
    """Count one hit in the window starting at ``start``, in one round trip; returns
    (hits in this window including this one, hits in the window before)."""
    row = await db.fetchrow(
        """
        WITH counted AS (
            INSERT INTO rate_counters AS c (key, window_start, hits, expires_at)
            VALUES ($1, $2::bigint, 1, to_timestamp($2::bigint + 2 * $3::bigint))
            ON CONFLICT (key, window_start) DO UPDATE SET hits = c.hits + 1
            RETURNING hits
        )
        SELECT (SELECT hits FROM counted) AS current,
               coalesce((SELECT hits FROM rate_counters
                         WHERE key = $1 AND window_start = $2 - $3), 0) AS previous
        """,
        key,
        start,
        window,
    )
    assert row is not None
    return int(row["current"]), int(row["previous"])


async def take_back(db: Db, key: bytes, start: int) -> None:
    """One hit fewer in the window starting at ``start`` (none below zero)."""
    await db.execute(
        "UPDATE rate_counters SET hits = hits - 1"
        " WHERE key = $1 AND window_start = $2::bigint AND hits > 0",
        key,
        start,
    )


async def prune(db: Db, now: float) -> int:
    """Delete the rows no window counts any more, in batches (a window of many addresses,
    an attack's, would otherwise go in one long statement); returns how many."""
    return await delete_in_batches(db, "rate_counters", "expires_at < to_timestamp($1)", now)
