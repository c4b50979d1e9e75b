"""The Activity screen's Actor filter on a log kept for years: finding who appears in it
reads a few rows per actor from activity_by_actor, not every entry of the log (rows read,
counted by EXPLAIN ANALYZE, not a timing). On 5,000 entries it sorted all 5,000 each time
the screen opened (9.5 ms), so a log of a million took seconds."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest

from services.identity import activity_repository as repo

pytestmark = pytest.mark.integration

ENTRIES = 20_000
ACTORS = 4


def rows_read(plan: dict[str, Any], table: str) -> int:
    """Rows every scan of ``table`` in an analysed plan returned, over all its loops."""
    read = 0
    if plan.get("Relation Name") == table:
        read += int(plan["Actual Rows"]) * int(plan["Actual Loops"])
    for child in plan.get("Plans", []):
        read += rows_read(child, table)
    return read


async def test_the_actor_filter_reads_a_few_rows_an_actor_not_the_whole_log(
    pool: asyncpg.Pool,
) -> None:
    tag = uuid.uuid4().hex[:8]
    actors = [f"{tag}-{n}" for n in range(ACTORS)]
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO activity (id, occurred_at, action, actor_type, actor_id, actor_name,"
            " object_type) SELECT gen_random_uuid(), now() - i * interval '1 minute',"
            " 'portal.updated', 'user', ($1::text[])[1 + i % $2::int],"
            " 'Actor ' || (1 + i % $2::int), 'portal'"
            " FROM generate_series(1, $3::int) AS i",
            actors,
            ACTORS,
            ENTRIES,
        )
        try:
            await conn.execute("VACUUM ANALYZE activity")
            everyone = await conn.fetchval("SELECT count(DISTINCT actor_id) FROM activity")
            found = await repo.actors(conn, 200)
            sql = repo.ACTORS_QUERY
            plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", 200))
        finally:
            await conn.execute("DELETE FROM activity WHERE actor_id = ANY($1::text[])", actors)

    # Everyone, most recently active first, with the name of their latest entry.
    assert len(found) == everyone
    mine = [r["actor_id"] for r in found if r["actor_id"] in actors]
    assert mine == [actors[1], actors[2], actors[3], actors[0]]
    assert {r["actor_name"] for r in found if r["actor_id"] in actors} == {
        f"Actor {n}" for n in range(1, ACTORS + 1)
    }
    # A handful of rows for each actor, not the log's 20,000.
    assert rows_read(plan[0]["Plan"], "activity") <= 3 * everyone + 3
