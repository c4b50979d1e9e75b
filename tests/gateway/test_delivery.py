"""What a browser downloads: text answers gzipped when it accepts them (not small ones,
not a page another site opened), static files under URLs named by their content that it
keeps for a year, the plain URLs revalidated with a 304, the CSRF token masked afresh on
every page (so a compressed page can't be searched for it), no /favicon.ico round trip."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.app import create_app
from tests.gateway.conftest import log_in, make_settings
from tests.gateway.fakes import Backend

STATIC = Path(__file__).resolve().parents[2] / "services" / "gateway" / "static"
PASSWORD = "correct horse battery staple"
# What Chromium sends (following our own link), and what asks for no compression.
CHROMIUM = {"Accept-Encoding": "gzip, deflate, br, zstd", "Sec-Fetch-Site": "same-origin"}
IDENTITY = {"Accept-Encoding": "identity"}
YEAR = "public, max-age=31536000, immutable"
ASSET = re.compile(r'(?:href|src)="(/static/[^"]+)"')
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def raw(backend: Backend) -> AsyncIterator[TestClient]:
    """The gateway as a browser's network sees it: bodies as sent, not decompressed."""
    client = TestClient(TestServer(create_app(make_settings(backend))), auto_decompress=False)
    await client.start_server()
    yield client
    await client.close()


async def page_html(client: TestClient, path: str) -> str:
    response = await client.get(path, headers=IDENTITY)
    assert response.status == 200, path
    return (await response.read()).decode()


async def test_pages_name_static_files_by_their_content_and_browsers_keep_them_a_year(
    raw: TestClient, backend: Backend
) -> None:
    await log_in(raw, backend.add_user("a@example.com", PASSWORD, role="administrator"), PASSWORD)
    portal = backend.add_portal("Acme")
    linked: set[str] = set()
    for path in ("/login", f"/admin/portals/{portal['id']}/import", "/api/docs"):
        linked |= set(ASSET.findall(await page_html(raw, path)))
    names = {re.sub(r"\.[0-9a-f]{16}\.", ".", url.rsplit("/", 1)[1]) for url in linked}
    assert names == {"app.css", "app.js", "import.js", "api-docs.css"}, linked
    for url in linked:
        name = re.sub(r"\.[0-9a-f]{16}\.", ".", url.rsplit("/", 1)[1])
        content = (STATIC / name).read_bytes()
        assert (
            url
            == f"/static/{name.split('.')[0]}.{hashlib.sha256(content).hexdigest()[:16]}.{name.split('.')[1]}"
        )
        response = await raw.get(url, headers=IDENTITY)
        assert response.status == 200
        assert response.headers["Cache-Control"] == YEAR, url
        assert await response.read() == content
        assert response.headers["Content-Type"].startswith(("text/css", "text/javascript"))


async def test_a_plain_or_unknown_static_url_is_asked_again_and_answered_304(
    raw: TestClient,
) -> None:
    content = (STATIC / "app.css").read_bytes()
    # The URL pages used before the fingerprints, and one from another release's page.
    for url in ("/static/app.css", "/static/app.0123456789abcdef.css"):
        response = await raw.get(url, headers=IDENTITY)
        assert response.status == 200 and await response.read() == content
        assert response.headers["Cache-Control"] == "public, no-cache", url
        etag = response.headers["ETag"]
        again = await raw.get(url, headers={**IDENTITY, "If-None-Match": etag})
        assert again.status == 304 and await again.read() == b""
        assert again.headers["ETag"] == etag
    missing = await raw.get("/static/nothing.css", headers=IDENTITY)
    assert missing.status == 404 and missing.headers["Cache-Control"] == "no-store"


async def test_text_answers_are_gzipped_for_a_browser_that_accepts_it(raw: TestClient) -> None:
    page = await raw.get("/login", headers=CHROMIUM)
    assert page.headers.get("Content-Encoding") == "gzip"
    vary = {v.strip() for v in page.headers["Vary"].split(",")}
    assert {"Accept-Encoding", "Accept-Language", "Cookie"} <= vary
    sent = await page.read()
    html = gzip.decompress(sent).decode()
    assert ">Log In</button>" in html and len(sent) < len(html.encode())

    api = await raw.get("/api/v1/openapi.json", headers=CHROMIUM)
    assert api.headers.get("Content-Encoding") == "gzip"
    assert json.loads(gzip.decompress(await api.read()))["openapi"].startswith("3.")

    (script,) = [u for u in ASSET.findall(html) if "/app." in u and u.endswith(".js")]
    js = await raw.get(script, headers=CHROMIUM)
    assert js.headers.get("Content-Encoding") == "gzip"
    assert "Accept-Encoding" in js.headers["Vary"]
    assert gzip.decompress(await js.read()) == (STATIC / "app.js").read_bytes()

    # Nothing compressed for a client that doesn't take gzip.
    for refused in ("identity", "gzip;q=0, deflate", "br"):
        for url in ("/login", "/api/v1/openapi.json", script):
            response = await raw.get(url, headers={"Accept-Encoding": refused})
            assert "Content-Encoding" not in response.headers, (refused, url)


async def test_small_answers_and_pages_another_site_opened_are_not_compressed(
    raw: TestClient,
) -> None:
    small = await raw.get("/api/v1/portals", headers=CHROMIUM)  # 401, a few bytes of JSON
    assert small.status == 401 and "Content-Encoding" not in small.headers
    # A page another site opened has the victim's cookies and the attacker's words in it:
    # sent as it is (BREACH). Our own links, and the address bar, get it gzipped.
    for site, encoding in (
        ("cross-site", None),
        ("same-site", None),
        ("same-origin", "gzip"),
        ("none", "gzip"),
    ):
        response = await raw.get("/login", headers={**CHROMIUM, "Sec-Fetch-Site": site})
        assert response.headers.get("Content-Encoding") == encoding, site
    # A browser from before Sec-Fetch-Site (Chrome 76, Firefox 90, Safari 16.4) doesn't say
    # whether another site opened the page: sent as it is too. Its API answers and
    # scripts, which hold no words of an attacker's beside a secret, are still gzipped.
    older = {"Accept-Encoding": "gzip, deflate"}
    response = await raw.get("/login", headers=older)
    assert response.headers.get("Content-Encoding") is None
    assert "Accept-Encoding" in response.headers["Vary"]
    api = await raw.get("/api/v1/openapi.json", headers=older)
    assert api.headers.get("Content-Encoding") == "gzip"


async def test_another_site_cannot_make_a_browser_read_the_api_with_its_session(
    raw: TestClient, backend: Backend
) -> None:
    """A link or a script on another site navigates the administrator's browser to a JSON
    answer (a GET: no form, no token): the Lax session cookie goes with it. Answered, it
    tells whoever sees the traffic's sizes what a search found (gzipped or not); so a
    session's API answer, and the editor's user search, go only to our own pages and the
    address bar."""
    admin = backend.add_user("admin@example.com", PASSWORD, role="administrator")
    backend.add_user("ann.secret@example.com", PASSWORD)
    await log_in(raw, admin, PASSWORD)
    for path in ("/api/v1/users?q=ann.secret", "/admin/users/search?q=ann.secret"):
        for site in ("cross-site", "same-site"):
            response = await raw.get(path, headers={**IDENTITY, "Sec-Fetch-Site": site})
            body = await response.read()
            assert response.status == 403, (path, site, body[:200])
            assert b"ann.secret" not in body
        for site in ("same-origin", "none"):
            response = await raw.get(path, headers={**IDENTITY, "Sec-Fetch-Site": site})
            assert response.status == 200, (path, site)
            assert b"ann.secret@example.com" in await response.read()
    error = await (
        await raw.get("/api/v1/users", headers={**IDENTITY, "Sec-Fetch-Site": "cross-site"})
    ).json()
    assert error["error"]["code"] == "csrf_failed"
    # A key is no cookie a browser sends by itself: its holder's calls are answered
    # whatever the header says.
    key, _ = backend.add_api_key("crm", ["users:read"])
    raw.session.cookie_jar.clear()
    response = await raw.get(
        "/api/v1/users", headers={"Authorization": f"Bearer {key}", "Sec-Fetch-Site": "cross-site"}
    )
    assert response.status == 200


async def test_every_page_shows_the_csrf_token_masked_afresh(
    gw: TestClient, backend: Backend
) -> None:
    first = CSRF_FIELD.findall(await (await gw.get("/login")).text())
    cookie = gw.session.cookie_jar.filter_cookies(gw.make_url("/"))["cp_csrf"].value
    second = CSRF_FIELD.findall(await (await gw.get("/login")).text())
    assert first and second and first[0] != second[0]
    assert cookie not in first[0] and cookie not in second[0]
    # Either page's token logs in, and one masking another cookie's token doesn't.
    user = backend.add_user("a@example.com", PASSWORD)
    for token in (first[0], second[0]):
        response = await gw.post(
            "/login",
            data={"csrf_token": token, "email": user["email"], "password": PASSWORD},
            allow_redirects=False,
        )
        assert response.status == 303
    forged = await gw.post(
        "/login",
        data={"csrf_token": first[0][:-4] + "AAA=", "email": user["email"], "password": PASSWORD},
        allow_redirects=False,
    )
    assert forged.status == 403


async def test_pages_name_their_icon_so_browsers_dont_ask_for_favicon_ico(
    raw: TestClient,
) -> None:
    html = await page_html(raw, "/login")
    assert '<link rel="icon" href="data:,">' in html
