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


async def test_the_api_writes_back_only_onto_the_revision_it_read(api: Api) -> None:
    portal = await api.portal("Acme Website")
    path = f"/portals/{portal['id']}"
    code, read = await api.call("GET", path)
    assert code == 200 and read["revision"] == 1
    # Someone else changes the portal after this program read it.
    code, _ = await api.call("PATCH", path, {"title": "Acme Rebrand"})
    assert code == 200
    code, answer = await api.call("PATCH", path, {"content": "Hello", "revision": 1})
    assert code == 409, answer
    assert answer["error"]["code"] == "portal_changed" and answer["error"]["revision"] == 2
    code, answer = await api.call("PATCH", path, {"content": "Hello", "revision": 2})
    assert code == 200 and (answer["title"], answer["content"], answer["revision"]) == (
        "Acme Rebrand",
        "Hello",
        3,
    )
    for body in ({"revision": 3}, {"title": "x", "revision": 0}, {"title": "x", "revision": "3rd"}):
        code, answer = await api.call("PATCH", path, body)
        assert code == 422, (body, answer)
