"""Two staff members in one portal editor: neither loses the other's change without a word."""

from __future__ import annotations

import html as html_lib

from tests.e2e.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Browser, Stack
from tests.e2e.flows import Api, create_portal
from tests.support.stack import login


async def _portal(api: Api, editor_url: str) -> dict[str, str]:
    code, portal = await api.call("GET", "/portals/" + editor_url.rstrip("/").rsplit("/", 1)[1])
    assert code == 200, portal
    return dict(portal)


async def test_a_change_saved_meanwhile_is_kept_and_a_clash_is_told(
    stack: Stack, api: Api, admin: Browser
) -> None:
    url, first_look = await create_portal(admin, "Acme Website", "Welcome.\n\nYour files.")
    other = await login(stack, ADMIN_EMAIL, ADMIN_PASSWORD)
    try:
        # Someone else renames the portal while the first editor stays open.
        _, _, theirs = await other.get(url)
        code, _, _ = await other.submit(url, theirs, "Save Portal", {"Title": "Acme Rebrand"})
        assert code == 200

        # The first editor, opened before the rename, changes only the Content.
        code, _, page = await admin.submit(
            url, first_look, "Save Portal", {"Content": "Welcome back.\n\nYour files."}
        )
        assert code == 200, page[:1000]
        portal = await _portal(api, url)
        assert portal["title"] == "Acme Rebrand"  # the rename is not undone
        assert portal["content"] == "Welcome back.\n\nYour files."

        # Both change the Title: the second Save is refused, the other's title kept and named.
        _, _, mine = await admin.get(url)
        _, _, theirs = await other.get(url)
        code, _, _ = await other.submit(url, theirs, "Save Portal", {"Title": "Acme Group"})
        assert code == 200
        code, _, page = await admin.submit(
            url, mine, "Save Portal", {"Title": "Acme Ltd", "Status": "Pending"}
        )
        assert code == 409, page[:1000]
        text = html_lib.unescape(page)
        assert "Someone else changed the Title to “Acme Group” while you were editing." in text
        assert 'value="Acme Ltd"' in page  # what was typed is kept
        portal = await _portal(api, url)
        assert (portal["title"], portal["status"]) == ("Acme Group", "active")  # nothing saved

        # Saving the same form again, having been told, replaces it.
        code, _, page = await admin.submit(url, page, "Save Portal")
        assert code == 200, page[:1000]
        portal = await _portal(api, url)
        assert (portal["title"], portal["status"]) == ("Acme Ltd", "pending")
    finally:
        await other.close()
