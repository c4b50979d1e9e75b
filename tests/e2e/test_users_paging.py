"""Issue 15, the Users screen well past 200 users: searched by email and followed page by
page through Next page, every account shows up exactly once (users made in one statement
share their creation time, so the keyset's tie-break on the id is what keeps the pages
apart)."""

from __future__ import annotations

import html as htmlmod
import re
import uuid

import asyncpg
import pytest

from tests.e2e.conftest import Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

USERS = 230
PAGE = 50


async def test_the_users_screen_pages_well_past_200_users(stack: Stack, admin: Browser) -> None:
    tag = uuid.uuid4().hex[:8]
    emails = [f"paging-{tag}-{n:03d}@example.com" for n in range(USERS)]
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute(
            "INSERT INTO identity.users (id, email, role, password_hash)"
            " SELECT gen_random_uuid(), email, 'client', 'not-a-hash'"
            " FROM unnest($1::text[]) AS email",
            emails,
        )
    finally:
        await conn.close()

    seen: list[str] = []
    pages = 0
    url: str | None = f"/admin/users?q=paging-{tag}"
    while url is not None:
        status, _, page = await admin.get(url)
        assert status == 200
        pages += 1
        on_page = set(re.findall(rf"paging-{tag}-\d{{3}}@example\.com", page))
        assert len(on_page) <= PAGE
        seen.extend(on_page)
        found = re.search(r'<a href="(/admin/users\?[^"]*)">Next page</a>', page)
        url = htmlmod.unescape(found.group(1)) if found else None
        assert pages <= USERS // PAGE + 1, "the pages never end"

    assert sorted(seen) == emails, "every user once, none twice"
    assert pages == -(-USERS // PAGE)
