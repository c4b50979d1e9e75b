"""Invitations list at scale: 1,000,000 rows inserted with one generate_series INSERT,
then the first page, a deep keyset page, a filtered page and a search by email of
GET /api/v1/invitations."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from .stack import Stack
from .stats import latency_summary, ms

PORTALS = 4
REQUESTS = 100
DEPTH = 50
TARGET_P95_MS = 50.0

# Spread over the portals and the four statuses, 1 s apart going back from now (so no
# pending row is due for the expiry sweep during the run).
BULK_INSERT = """
INSERT INTO invitations.invitations
    (id, email, email_lower, portal_id, status, token_hash, sent_at, expires_at, delivery,
     invited_by, accepted_at, revoked_at, created_at)
SELECT gen_random_uuid(), e, e, ($1::uuid[])[1 + i % array_length($1::uuid[], 1)],
       s, md5($2 || i::text) || md5(i::text || $2), t, t + interval '14 days', 'sent', 'bulk',
       CASE WHEN s = 'accepted' THEN t + interval '1 hour' END,
       CASE WHEN s = 'revoked' THEN t + interval '1 hour' END, t
FROM generate_series(1, $3::int) AS i,
     LATERAL (SELECT 'bulk-' || $2 || '-' || i || '@example.com' AS e,
                     (ARRAY['pending', 'accepted', 'expired', 'revoked'])[1 + (i / 7) % 4] AS s,
                     now() - i * interval '1 second' AS t) AS x
"""


async def _measure(stack: Stack, query: str) -> dict[str, Any]:
    times = []
    items = 0
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        status, body = await stack.get(f"/api/v1/invitations?{query}")
        times.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"list {query}: {status} {body}")
        items = len(body["items"])
    return {
        "requests": REQUESTS,
        "items": items,
        "auth": stack.read_auth,
        **latency_summary(times, 50, 95),
    }


async def _deep_cursor(stack: Stack, query: str, depth: int) -> str:
    cursor: str | None = None
    for _ in range(depth):
        suffix = f"&cursor={cursor}" if cursor else ""
        status, body = await stack.get(f"/api/v1/invitations?{query}{suffix}")
        if status != 200 or not body.get("next_cursor"):
            raise RuntimeError(f"paging stopped early: {status} {body}")
        cursor = str(body["next_cursor"])
    assert cursor is not None
    return cursor


async def run(stack: Stack, quick: bool) -> list[dict[str, Any]]:
    rows = 10_000 if quick else 1_000_000
    tag = uuid.uuid4().hex[:6]
    portals = [await stack.create_portal(f"List bench {tag} {i}") for i in range(PORTALS)]
    ids = [uuid.UUID(p["id"]) for p in portals]
    # The replica rows (title, slug) the list joins come from portal.created: wait for them.
    deadline = time.monotonic() + 30
    while (
        await stack.pool.fetchval(
            "SELECT count(*) FROM invitations.portals WHERE portal_id = ANY($1::uuid[])", ids
        )
        < PORTALS
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("invitations never saw the benchmark portals")
        await asyncio.sleep(0.1)
    t0 = time.perf_counter()
    async with stack.pool.acquire() as conn:
        await conn.execute(BULK_INSERT, ids, tag, rows, timeout=1800)
        await conn.execute("ANALYZE invitations.invitations", timeout=600)
    load_s = time.perf_counter() - t0
    limit = "limit=50"
    depth = 5 if quick else DEPTH
    deep = await _deep_cursor(stack, limit, depth)
    filtered = f"{limit}&status=accepted&portal_id={portals[1]['id']}"
    deep_filtered = await _deep_cursor(stack, filtered, depth)
    cases = {
        "first_page": limit,
        "deep_page": f"{limit}&cursor={deep}",
        "filtered_page": filtered,
        "filtered_deep_page": f"{filtered}&cursor={deep_filtered}",
        # The Invitations screen's search: one address among all the rows (its own index).
        "email_search": f"{limit}&email=bulk-{tag}-{rows // 2}@EXAMPLE.com",
    }
    results: list[dict[str, Any]] = [
        {"bench": "list", "case": "load", "rows": rows, "insert_ms": ms(load_s)}
    ]
    for case, query in cases.items():
        measured = await _measure(stack, query)
        results.append(
            {
                "bench": "list",
                "case": case,
                "rows": rows,
                "depth_pages": depth if "deep" in case else 0,
                **measured,
                "target_p95_ms": TARGET_P95_MS,
            }
        )
    return results
