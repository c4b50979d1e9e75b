"""Portal Content that renders far larger than it is written: one link reference defined
once with a long address and used thousands of times (a Markdown "billion laughs")."""

from __future__ import annotations

import html

import pytest

from tests.security.conftest import api
from tests.security.flows import new_portal
from tests.support.forms import find_form
from tests.support.stack import Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# 59,998 characters of Markdown (the editor and the API take 60,000): 5,000 uses ([a][a]) of one
# reference whose address is 29,990 characters long. Rendered, every use repeats the
# address: 150,000,000 characters of HTML.
BOMB = "[a]" * 10_000 + "\n\n[a]: /" + "u" * 29_990
REFUSED = (
    "The Content would make a page too large to show: a link or picture defined once is used"
    " too many times. Use it fewer times, or give it a shorter address."
)


async def test_content_that_renders_too_large_is_refused_by_the_api(
    stack: Stack, admin: Browser
) -> None:
    assert len(BOMB) <= 60_000
    status, body = await api(admin, "POST", "/api/v1/portals", {"title": "Bomb", "content": BOMB})
    assert status == 422, (status, str(body)[:300])
    assert body["error"] == {"code": "content_too_large", "message": REFUSED}
    portal = await new_portal(admin, "Welcome.")
    status, body = await api(admin, "PATCH", f"/api/v1/portals/{portal['id']}", {"content": BOMB})
    assert status == 422 and body["error"]["code"] == "content_too_large"
    status, kept = await api(admin, "GET", f"/api/v1/portals/{portal['id']}")
    assert status == 200 and kept["content"] == "Welcome." and kept["revision"] == 1
    # A page with many links to one address, as people write them, is no bomb.
    links = "".join(f"- [Report {n}][reports]\n" for n in range(1_000))
    fine = links + "\n[reports]: https://example.com/" + "r" * 200
    status, body = await api(admin, "PATCH", f"/api/v1/portals/{portal['id']}", {"content": fine})
    assert status == 200 and body["content_html"].count("https://example.com/") == 1_000


async def test_the_editor_says_why_beside_the_content_and_keeps_it(
    stack: Stack, admin: Browser
) -> None:
    _, url, page = await admin.get("/admin/portals/new")
    status, _, answer = await admin.submit(
        url, page, "Save Portal", {"Title": "Bomb page", "Content": BOMB}
    )
    assert status == 422
    shown = html.unescape(answer)
    assert REFUSED in shown and BOMB in shown
    status, found = await api(admin, "GET", "/api/v1/portals?q=Bomb%20page")
    assert status == 200 and found["items"] == []
    # Saving a portal's Content, likewise; what it had stays.
    portal = await new_portal(admin, "Welcome.")
    editor = f"{stack.public_url}/admin/portals/{portal['id']}"
    _, _, shown = await admin.get(editor)
    status, _, answer = await admin.submit(editor, shown, "Save Portal", {"Content": BOMB})
    assert status == 422 and REFUSED in html.unescape(answer)
    status, kept = await api(admin, "GET", f"/api/v1/portals/{portal['id']}")
    assert kept["content"] == "Welcome." and kept["revision"] == 1
    # In the reader's language, as every word beside a field.
    data = find_form(page, "Save Portal").fill({"Title": "Bombe", "Content": BOMB})
    async with admin.session.post(url, data=data, headers={"Accept-Language": "de"}) as german:
        assert german.status == 422
        assert "Der Inhalt würde eine zu große Seite ergeben" in html.unescape(await german.text())
