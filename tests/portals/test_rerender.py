"""Pages saved under older rendering rules or libraries (``domain.RENDERER``) are rendered
again in the background: a sanitiser fix reaches the pages saved before it. Before, a page
kept the HTML it was saved with for good, whatever was fixed since."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.portals import api
from services.portals import repository as repo
from services.portals.domain import RENDERER, render_content
from services.portals.handlers import rerender_once

pytestmark = pytest.mark.integration

# What an older sanitiser might have let through, and what today's rules make of it.
UNSAFE = '<p>old</p><script>alert(1)</script><img src="https://example.com/a.png" onerror="x()">'
# Content today's rules refuse (one reference written out 10,000 times).
REFUSED = "[a]" * 10_000 + "\n\n[a]: /" + "u" * 29_990


async def _saved_by_an_older_renderer(db: asyncpg.Pool, content: str, html: str) -> uuid.UUID:
    portal_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO portals (id, title, slug, content, content_html, status, rendered_with)"
        " VALUES ($1, 'Old page', $2, $3, $4, 'active', $5)",
        portal_id,
        f"old-{portal_id.hex[:12]}",
        content,
        html,
        "0; markdown-it-py 3.0.0; nh3 0.2.14",
    )
    return portal_id


async def _stored(db: asyncpg.Pool, portal_id: uuid.UUID) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT content_html, rendered_with, revision, updated_at FROM portals WHERE id = $1",
        portal_id,
    )
    assert row is not None
    return dict(row)


async def test_a_page_an_older_renderer_wrote_is_rendered_again(
    client: TestClient[Any, Any], db: asyncpg.Pool
) -> None:
    content = "**Welcome** <script>alert(1)</script>"
    portal_id = await _saved_by_an_older_renderer(db, content, UNSAFE)
    before = await _stored(db, portal_id)
    events = await db.fetchval("SELECT count(*) FROM outbox")

    assert await rerender_once(client.app[api.DEPS]) >= 1

    after = await _stored(db, portal_id)
    assert after["content_html"] == render_content(content)
    assert "<script" not in after["content_html"]
    assert after["rendered_with"] == RENDERER
    # The portal is as its editor left it: same revision, same time, nothing announced.
    assert (after["revision"], after["updated_at"]) == (before["revision"], before["updated_at"])
    assert await db.fetchval("SELECT count(*) FROM outbox") == events
    # What the API and the gateway read.
    resp = await client.get(f"/portals/{portal_id}")
    assert (await resp.json())["content_html"] == after["content_html"]
    # Once done, nothing to do.
    assert await rerender_once(client.app[api.DEPS]) == 0


async def test_content_now_refused_keeps_its_page_sanitised_by_todays_rules(
    client: TestClient[Any, Any], db: asyncpg.Pool
) -> None:
    portal_id = await _saved_by_an_older_renderer(db, REFUSED, UNSAFE)

    await rerender_once(client.app[api.DEPS])

    after = await _stored(db, portal_id)
    assert after["content_html"] == ('<p>old</p><img src="https://example.com/a.png">')
    assert after["rendered_with"] == RENDERER


async def test_a_save_in_between_keeps_what_it_rendered(
    client: TestClient[Any, Any], db: asyncpg.Pool
) -> None:
    portal_id = await _saved_by_an_older_renderer(db, "old words", UNSAFE)
    read = await _stored(db, portal_id)
    resp = await client.patch(f"/portals/{portal_id}", json={"content": "new words"})
    assert resp.status == 200, await resp.text()

    async with db.acquire() as conn:
        stored = await repo.store_rendering(
            conn, portal_id, read["revision"], "<p>stale</p>", RENDERER
        )

    assert not stored
    after = await _stored(db, portal_id)
    assert after["content_html"] == render_content("new words")
    assert after["rendered_with"] == RENDERER  # the save itself rendered it today


async def test_a_page_an_older_replica_saved_over_todays_rendering_is_rendered_again(
    client: TestClient[Any, Any], db: asyncpg.Pool
) -> None:
    """During a rollout a replica of the previous release still saves pages: its UPDATE
    writes its own rendering and knows nothing of ``rendered_with``, which still names
    today's renderer from the page's last save here. Its content is rendered again all
    the same; a change of title alone renders nothing again."""
    resp = await client.post(
        "/portals", json={"title": "Rolled", "content": "today", "status": "active"}
    )
    assert resp.status == 201, await resp.text()
    portal_id = uuid.UUID((await resp.json())["id"])
    assert await rerender_once(client.app[api.DEPS]) == 0
    await db.execute(  # the previous release's save, as its repository writes it
        "UPDATE portals SET content = $2, content_html = $3, revision = revision + 1,"
        " updated_at = now() WHERE id = $1",
        portal_id,
        "**older** <script>alert(1)</script>",
        UNSAFE,
    )

    assert await rerender_once(client.app[api.DEPS]) >= 1

    after = await _stored(db, portal_id)
    assert after["content_html"] == render_content("**older** <script>alert(1)</script>")
    resp = await client.patch(f"/portals/{portal_id}", json={"title": "Renamed"})
    assert resp.status == 200, await resp.text()
    assert await rerender_once(client.app[api.DEPS]) == 0
