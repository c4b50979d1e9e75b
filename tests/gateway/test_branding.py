"""Settings → Branding through the gateway, in front of the real mailer (which keeps the
branding) on the run's database and broker: the page and its refusals, the API, and a
logo uploaded through one gateway served by another (two gateway apps, one database)."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from libs.common.colours import readable_on
from services.gateway import upstream
from services.gateway.app import create_app
from services.gateway.domain import PAGE_BACKGROUND, theme_css, theme_version
from services.gateway.state import CACHE
from services.mailer.app import create_app as create_mailer
from tests.gateway.conftest import csrf, log_in, make_settings
from tests.gateway.fakes import Backend
from tests.mailer.conftest import mailer_settings
from tests.support.env import TestEnv, free_port

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def picture(kind: str = "PNG", size: tuple[int, int] = (160, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (26, 95, 180)).save(out, format=kind)
    return out.getvalue()


@pytest.fixture
async def mailer(migrated_schemas: TestEnv) -> AsyncIterator[str]:
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_mailer(mailer_settings(migrated_schemas, free_port())))
    )
    await client.start_server()
    yield str(client.make_url("")).rstrip("/")
    await client.close()
    conn = await asyncpg.connect(migrated_schemas.database_url)
    try:  # the run's database is shared: the built-in branding for the next test
        await conn.execute("DELETE FROM mailer.branding")
    finally:
        await conn.close()


Start = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def start_gateway(
    backend: Backend, mailer: str, migrated_schemas: TestEnv
) -> AsyncIterator[Start]:
    started: list[TestClient[Any, Any]] = []

    async def start(**extra: Any) -> TestClient[Any, Any]:
        settings = make_settings(
            backend, mailer_url=mailer, **migrated_schemas.keys.settings("gateway"), **extra
        )
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        started.append(client)
        return client

    yield start
    for client in reversed(started):
        await client.close()


async def as_admin(gw: TestClient[Any, Any], backend: Backend) -> None:
    email = f"admin-{uuid.uuid4().hex[:6]}@example.com"
    admin = backend.add_user(email, PASSWORD, role="administrator")
    await log_in(gw, admin, PASSWORD)


async def post(gw: TestClient[Any, Any], path: str, data: Any) -> aiohttp.ClientResponse:
    return await gw.post(path, data=data, allow_redirects=False)


def logo_form(token: str, content: bytes, filename: str = "logo.png") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("csrf_token", token)
    form.add_field("logo", content, filename=filename, content_type="image/png")
    return form


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_the_branding_page_saves_and_every_page_shows_it(
    start_gateway: Start, backend: Backend
) -> None:
    gw = await start_gateway()
    await as_admin(gw, backend)
    page = await (await gw.get("/admin/settings")).text()
    assert 'href="/admin/settings/branding"' in page
    page = await (await gw.get("/admin/settings/branding")).text()
    for label in ("Agency Name", "Accent Colour", "Reply-To", "Footer Text", "Logo"):
        assert f">{label}</label>" in page
    assert "<title>Branding · ClientPress</title>" in page

    fields = {
        "agency_name": "Northwind <Studio>",
        "accent_colour": "#1A5FB4",
        "reply_to": "hello@northwind.example",
        "footer_text": "Northwind Studio · 1 Harbour Street",
    }
    saved = await post(gw, "/admin/settings/branding", {"csrf_token": await csrf(gw), **fields})
    assert saved.status == 303
    page = await (await gw.get("/admin/settings/branding")).text()
    assert "Branding saved." in page
    assert "<title>Branding · Northwind &lt;Studio&gt;</title>" in page
    assert '<span class="brand-name">Northwind &lt;Studio&gt;</span>' in page
    assert '<p class="footer-text">Northwind Studio · 1 Harbour Street</p>' in page
    stylesheet = f"/branding/theme.css?v={theme_version('#1a5fb4')}"
    assert f'<link rel="stylesheet" href="{stylesheet}">' in page
    assert 'value="#1a5fb4"' in page  # kept as the mailer cleaned it
    css = await gw.get(stylesheet)
    assert css.content_type == "text/css"
    assert "--accent: #1a5fb4;" in await css.text()
    assert "immutable" in css.headers["Cache-Control"]


async def test_an_accent_white_text_is_unreadable_on_is_refused_with_the_reason(
    start_gateway: Start, backend: Backend
) -> None:
    gw = await start_gateway()
    await as_admin(gw, backend)
    refused = await post(
        gw,
        "/admin/settings/branding",
        {
            "csrf_token": await csrf(gw),
            "agency_name": "Sunny",
            "accent_colour": "#ffcc00",
            "reply_to": "",
            "footer_text": "",
        },
    )
    assert refused.status == 422
    page = await refused.text()
    assert 'id="accent_colour-error" role="alert">White button text on #ffcc00' in page
    assert "WCAG AA needs at least 4.5:1" in page
    assert 'value="Sunny"' in page  # what was typed stays in the form
    # Nothing was saved.
    assert "Sunny" not in await (await gw.get("/")).text()


async def test_a_logo_uploaded_through_one_gateway_is_served_by_another(
    start_gateway: Start, backend: Backend, test_env: TestEnv
) -> None:
    one = await start_gateway()
    # The other keeps what it learns for 30 s: only the announcement makes it forget.
    other = await start_gateway(
        gateway_cache_seconds=30,
        amqp_url=test_env.amqp_url_as("gateway"),
        bus_prefix=test_env.bus_prefix,
    )

    async def live() -> bool:
        return other.app[CACHE].live

    await eventually(live, "the other gateway's listener connected")
    assert (await other.get("/branding/logo")).status == 404
    assert 'class="brand-logo"' not in await (await other.get("/login")).text()

    await as_admin(one, backend)
    uploaded = await post(
        one, "/admin/settings/branding/logo", logo_form(await csrf(one), picture())
    )
    assert uploaded.status == 303, await uploaded.text()
    page = await (await one.get("/admin/settings/branding")).text()
    assert "Logo uploaded." in page

    async def shown() -> bool:
        return (
            'class="brand-logo" src="/branding/logo?v=' in await (await other.get("/login")).text()
        )

    await eventually(shown, "the other gateway showing the new logo")
    served = await other.get("/branding/logo")
    assert served.status == 200
    assert served.content_type == "image/png"
    etag = served.headers["ETag"]
    assert served.headers["Cache-Control"] == "public, no-cache"
    with Image.open(io.BytesIO(await served.read())) as image:
        assert image.size == (160, 48)
    again = await other.get("/branding/logo", headers={"If-None-Match": etag})
    assert again.status == 304
    versioned = await other.get(f"/branding/logo?v={etag.strip(chr(34))}")
    assert "immutable" in versioned.headers["Cache-Control"]
    assert (await (await one.get("/branding/logo")).read()) == (
        await (await other.get("/branding/logo")).read()
    )


async def test_only_png_and_jpeg_logos_of_at_most_1_mb_are_taken(
    start_gateway: Start, backend: Backend
) -> None:
    gw = await start_gateway()
    await as_admin(gw, backend)
    token = await csrf(gw)
    gif = await post(gw, "/admin/settings/branding/logo", logo_form(token, picture("GIF")))
    assert gif.status == 422
    assert "The Logo must be a PNG or JPEG image." in await gif.text()
    text = await post(
        gw, "/admin/settings/branding/logo", logo_form(token, b"just text\n", "fake.png")
    )
    assert text.status == 422
    assert "The Logo must be a PNG or JPEG image." in await text.text()
    big = await post(
        gw, "/admin/settings/branding/logo", logo_form(token, picture() + b"\0" * 1_100_000)
    )
    assert big.status == 413
    assert "The Logo is too big: at most 1024 KB." in await big.text()
    # Past what the form may carry at all: refused before the form is read.
    huge = await post(
        gw, "/admin/settings/branding/logo", logo_form(token, picture() + b"\0" * 2_000_000)
    )
    assert huge.status == 413
    assert "The Logo is too big: at most 1024 KB." in await huge.text()
    assert (await gw.get("/branding/logo")).status == 404


async def test_the_api_reads_and_changes_the_branding(
    start_gateway: Start, backend: Backend
) -> None:
    gw = await start_gateway()
    await as_admin(gw, backend)
    headers = {"X-CSRF-Token": await csrf(gw)}
    refused = await gw.put(
        "/api/v1/settings/branding", json={"accent_colour": "#eeeeee"}, headers=headers
    )
    assert refused.status == 422
    assert (await refused.json())["error"]["code"] == "invalid_accent_colour"
    changed = await gw.put(
        "/api/v1/settings/branding", json={"agency_name": "Acme Agency"}, headers=headers
    )
    assert changed.status == 200
    body = await changed.json()
    assert body["agency_name"] == "Acme Agency"
    assert body["logo_etag"] is None
    assert (await (await gw.get("/api/v1/settings/branding")).json()) == body


async def test_staff_can_not_open_branding(start_gateway: Start, backend: Backend) -> None:
    gw = await start_gateway()
    staff = backend.add_user(f"staff-{uuid.uuid4().hex[:6]}@example.com", PASSWORD, role="staff")
    await log_in(gw, staff, PASSWORD)
    assert (await gw.get("/admin/settings/branding")).status == 403
    assert (await gw.get("/api/v1/settings/branding")).status == 403


async def test_a_mailer_that_stops_answering_is_asked_once_a_while_not_by_every_page(
    backend: Backend,
    migrated_schemas: TestEnv,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Every page shows the branding. While the mailer hangs, pages show the last branding
    seen; the pages that find none share one question, and after it failed nothing asks
    again for BRANDING_RETRY_SECONDS (before: each page waited for its own question, and
    logged a warning)."""
    monkeypatch.setattr(upstream, "BRANDING_TIMEOUT", 0.2)
    monkeypatch.setattr(upstream, "BRANDING_RETRY_SECONDS", 0.6)
    asked, hanging = 0, False

    async def branding(request: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        while hanging:
            await asyncio.sleep(0.02)
        return web.json_response({"agency_name": "Northwind Studio", "accent_colour": ""})

    mailer_app = web.Application()
    mailer_app.router.add_get("/branding", branding)
    mailer = TestServer(mailer_app)
    await mailer.start_server()
    settings = make_settings(
        backend,
        mailer_url=str(mailer.make_url("")).rstrip("/"),
        **migrated_schemas.keys.settings("gateway"),
    )
    gw: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
    await gw.start_server()

    async def pages(count: int) -> None:
        for response in await asyncio.gather(*(gw.get("/login") for _ in range(count))):
            assert response.status == 200
            assert '<span class="brand-name">Northwind Studio</span>' in await response.text()

    try:
        await pages(1)  # GATEWAY_CACHE_SECONDS=0: every page asks the mailer
        assert asked == 1
        hanging = True
        await pages(10)  # one question for all ten, timed out: the last branding seen
        assert asked == 2
        await pages(5)
        assert asked == 2  # inside the retry window, nobody asks
        await asyncio.sleep(0.7)
        await pages(3)
        assert asked == 3
        hanging = False
        await asyncio.sleep(0.7)
        await pages(1)  # it answers again: asked by each page as before
        await pages(1)
        assert asked == 5
    finally:
        hanging = False
        await gw.close()
        await mailer.close()
    lines = capfd.readouterr().out.splitlines()
    for event in ("branding_unavailable", "branding_available"):  # once each, not a page
        assert len([line for line in lines if f" {event} " in line]) == 1, lines


def test_the_theme_gives_links_a_shade_of_the_accent_readable_on_the_page() -> None:
    # White on #767676 is 4.54:1 (the mailer takes it); links on the grey page, 3.99:1.
    assert "--link: #1a5fb4;" in theme_css("#1a5fb4")
    css = theme_css("#767676")
    assert "--accent: #767676;" in css
    assert f"--link: {readable_on('#767676', PAGE_BACKGROUND)};" in css
    assert readable_on("#767676", PAGE_BACKGROUND) != "#767676"


@pytest.mark.parametrize(
    "accent",
    [
        "#1a5fb4; } body { background: url(https://evil.example/x) }",
        "#1a5fb4}</style><script>alert(1)</script>",
        "red",
        "#1A5FB4\n",
        "expression(alert(1))",
        "#1a5fb",
        "",
    ],
)
def test_the_theme_writes_no_accent_but_six_lower_case_hex_digits(accent: str) -> None:
    # The stylesheet is public and the mailer's answer is its only input: anything but
    # #rrggbb (which the mailer keeps) gives the built-in accent, never a rule of its own.
    assert theme_css(accent) == "/* The built-in accent (app.css). */\n"
