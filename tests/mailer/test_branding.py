"""Settings → Branding inside the mailer, on the real database, broker and an SMTP sink:
the internal routes (first values from the variables, refusals with their reasons, the
logo), settings.branding.changed in the outbox, and an email that carries the branding."""

from __future__ import annotations

import base64
import email.utils
import io
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from libs.common.bus import Bus
from services.mailer.api import ROUTES
from tests.mailer.conftest import StartMailer, invitation_job, publish_job, wait_for_row
from tests.support.env import TestEnv
from tests.support.smtp import SmtpSink, html_part, text_part

pytestmark = pytest.mark.integration

PoolFactory = Callable[[str], Any]


def png(colour: tuple[int, int, int] = (20, 90, 180)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (90, 30), colour).save(out, format="PNG")
    return out.getvalue()


class Internal:
    def __init__(self, client: TestClient[Any, Any], env: TestEnv, caller: str = "gateway"):
        self.client, self.env, self.caller = client, env, caller

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = self.env.keys.headers(self.caller, "mailer")
        response = await self.client.request(method, path, headers=headers, **kw)
        return response.status, await response.json()


@pytest.fixture
async def mailer_pool(pool_factory: PoolFactory) -> AsyncIterator[asyncpg.Pool]:
    pool: asyncpg.Pool = await pool_factory("mailer")
    yield pool
    # The run's database is shared: leave the built-in branding for the next test.
    await pool.execute("DELETE FROM branding")


async def branding_events(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT body FROM outbox WHERE routing_key = 'settings.branding.changed' ORDER BY seq"
    )
    return [orjson.loads(r["body"]) for r in rows]


async def test_the_variables_give_first_values_until_a_save(
    start_mailer: StartMailer,
    smtp_sink: SmtpSink,
    migrated_schemas: TestEnv,
    mailer_pool: asyncpg.Pool,
) -> None:
    client = await start_mailer(
        smtp_sink.port, mailer_agency_name="First Agency", mailer_accent_colour="#1a5fb4"
    )
    api = Internal(client, migrated_schemas)
    status, body = await api.call("GET", "/branding")
    assert status == 200
    assert body["agency_name"] == "First Agency"
    assert body["accent_colour"] == "#1a5fb4"
    assert body["logo_etag"] is None

    status, body = await api.call("PUT", "/branding", json={"footer_text": "Acme Ltd"})
    assert status == 200, body
    # Saved once: the variables' values became the row's; only the footer changed.
    assert body["agency_name"] == "First Agency"
    assert body["footer_text"] == "Acme Ltd"
    before = len(await branding_events(mailer_pool))
    status, _ = await api.call("PUT", "/branding", json={"footer_text": "Acme Ltd"})
    assert status == 200
    assert len(await branding_events(mailer_pool)) == before  # nothing changed, nothing said


async def test_bad_values_are_refused_with_their_field_and_reason(
    start_mailer: StartMailer,
    smtp_sink: SmtpSink,
    migrated_schemas: TestEnv,
    mailer_pool: asyncpg.Pool,
) -> None:
    api = Internal(await start_mailer(smtp_sink.port), migrated_schemas)
    said = len(await branding_events(mailer_pool))
    status, body = await api.call("PUT", "/branding", json={"accent_colour": "#ffcc00"})
    assert status == 422
    assert body["error"]["code"] == "invalid_accent_colour"
    assert body["error"]["field"] == "accent_colour"
    assert "1.51:1" in body["error"]["message"]
    status, body = await api.call("PUT", "/branding", json={"reply_to": "not an address"})
    assert (status, body["error"]["code"]) == (422, "invalid_reply_to")
    status, body = await api.call("PUT", "/branding", json={"footer_text": "x" * 501})
    assert (status, body["error"]["code"]) == (422, "invalid_footer_text")
    status, body = await api.call("PUT", "/branding", json={"colour": "#000000"})
    assert status == 422  # an unknown field is a mistake, not ignored
    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, format="GIF")
    status, body = await api.call(
        "PUT", "/branding/logo", json={"content": base64.b64encode(gif.getvalue()).decode()}
    )
    assert (status, body["error"]["code"]) == (422, "invalid_logo")
    assert len(await branding_events(mailer_pool)) == said


async def test_a_logo_that_is_not_ascii_base64_is_refused_as_not_base64(
    start_mailer: StartMailer,
    smtp_sink: SmtpSink,
    migrated_schemas: TestEnv,
    mailer_pool: asyncpg.Pool,
) -> None:
    api = Internal(await start_mailer(smtp_sink.port), migrated_schemas)
    said = len(await branding_events(mailer_pool))
    for content in ("\u00e9", "iVBOR\u00e9w0KGgo=", "\U0001f600"):
        status, body = await api.call("PUT", "/branding/logo", json={"content": content})
        assert (status, body["error"]["code"]) == (422, "invalid_logo"), content
    assert len(await branding_events(mailer_pool)) == said


async def test_a_logo_is_stored_served_and_announced(
    start_mailer: StartMailer,
    smtp_sink: SmtpSink,
    migrated_schemas: TestEnv,
    mailer_pool: asyncpg.Pool,
) -> None:
    api = Internal(await start_mailer(smtp_sink.port), migrated_schemas)
    said = len(await branding_events(mailer_pool))
    status, body = await api.call(
        "PUT", "/branding/logo", json={"content": base64.b64encode(png()).decode()}
    )
    assert status == 200, body
    etag = body["logo_etag"]
    assert body["logo_type"] == "image/png"
    status, logo = await api.call("GET", "/branding/logo")
    assert status == 200
    assert logo["etag"] == etag
    with Image.open(io.BytesIO(base64.b64decode(logo["content"]))) as image:
        assert image.size == (90, 30)
    [event] = (await branding_events(mailer_pool))[said:]
    assert event["data"] == {"changed": ["logo"]}
    assert event["source"] == "mailer"
    status, body = await api.call("DELETE", "/branding/logo")
    assert (status, body["logo_etag"]) == (200, None)
    status, body = await api.call("GET", "/branding/logo")
    assert (status, body["error"]["code"]) == (404, "logo_not_found")


async def test_the_api_publishes_its_openapi_document_to_every_service(
    start_mailer: StartMailer, smtp_sink: SmtpSink, migrated_schemas: TestEnv
) -> None:
    """As every service does (docs/design.md): each route of the table, its answers."""
    client = await start_mailer(smtp_sink.port)
    for caller in ("gateway", "invitations", "identity"):
        status, doc = await Internal(client, migrated_schemas, caller=caller).call(
            "GET", "/openapi.json"
        )
        assert status == 200, caller
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in ROUTES}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                assert "schema" in parameter, (method, path, parameter)
    assert "requestBody" in doc["paths"]["/branding/logo"]["put"]
    assert (
        "202"
        in doc["paths"]["/webhooks/{id}/deliveries/{delivery_id}/redeliver"]["post"]["responses"]
    )


async def test_only_the_gateway_may_change_the_branding(
    start_mailer: StartMailer, smtp_sink: SmtpSink, migrated_schemas: TestEnv
) -> None:
    client = await start_mailer(smtp_sink.port)
    status, body = await Internal(client, migrated_schemas, caller="invitations").call(
        "PUT", "/branding", json={"agency_name": "Mallory"}
    )
    assert status == 403
    status, _ = await Internal(client, migrated_schemas, caller="identity").call("GET", "/branding")
    assert status == 403


async def test_an_invitation_email_carries_the_branding(
    start_mailer: StartMailer,
    smtp_sink: SmtpSink,
    migrated_schemas: TestEnv,
    publisher: Bus,
    mailer_pool: asyncpg.Pool,
) -> None:
    client = await start_mailer(smtp_sink.port, public_url="https://portal.agency.example")
    api = Internal(client, migrated_schemas)
    status, body = await api.call(
        "PUT",
        "/branding",
        json={
            "agency_name": "Northwind & Co",
            "accent_colour": "#1a5fb4",
            "reply_to": "hello@northwind.example",
            "footer_text": "Northwind & Co · 1 Harbour Street",
        },
    )
    assert status == 200, body
    status, body = await api.call(
        "PUT", "/branding/logo", json={"content": base64.b64encode(png()).decode()}
    )
    etag = body["logo_etag"]
    to = f"client-{uuid.uuid4().hex[:8]}@example.com"
    job, _ = invitation_job(to, site_name="portal.agency.example")
    await publish_job(publisher, job)
    [msg] = await smtp_sink.sink.wait_for(to)
    name, address = email.utils.parseaddr(str(msg["From"]))
    assert (name, address) == ("Northwind & Co", "no-reply@example.org")
    assert msg["Reply-To"] == "hello@northwind.example"
    assert str(msg["Subject"]) == "You're invited to Acme Rebrand on Northwind & Co"
    text, html = text_part(msg), html_part(msg)
    assert "portal.agency.example" not in text  # the agency, not the host
    assert 'on "Northwind & Co"' in text or "on Northwind & Co." in text
    assert "Northwind & Co · 1 Harbour Street" in text
    assert f'src="https://portal.agency.example/branding/logo?v={etag}"' in html
    assert "Northwind &amp; Co · 1 Harbour Street" in html
    assert "background-color:#1a5fb4" in html
    await wait_for_row(mailer_pool, job.mail_id, lambda r: r["status"] == "sent")


@pytest.mark.parametrize(
    ("size", "shown"),
    [((90, 30), (120, 40)), ((480, 160), (120, 40)), ((2000, 100), (240, 12))],
    ids=["small", "drawn for high-density screens", "a wide banner"],
)
async def test_the_logo_says_its_size_for_clients_that_ignore_css(
    start_mailer: StartMailer,
    smtp_sink: SmtpSink,
    migrated_schemas: TestEnv,
    publisher: Bus,
    mailer_pool: asyncpg.Pool,
    size: tuple[int, int],
    shown: tuple[int, int],
) -> None:
    """Outlook for Windows reads an image's width and height attributes only (not CSS
    max-width): without a width it drew a logo at its own pixel size. The logo is 40 px
    high, at most 240 px wide, in proportion."""
    client = await start_mailer(smtp_sink.port)
    api = Internal(client, migrated_schemas)
    out = io.BytesIO()
    Image.new("RGB", size, (20, 90, 180)).save(out, format="PNG")
    status, body = await api.call(
        "PUT", "/branding/logo", json={"content": base64.b64encode(out.getvalue()).decode()}
    )
    assert status == 200, body
    to = f"client-{uuid.uuid4().hex[:8]}@example.com"
    await publish_job(publisher, invitation_job(to)[0])
    [msg] = await smtp_sink.sink.wait_for(to)
    html = html_part(msg)
    img = html[html.index("<img ") : html.index(">", html.index("<img ")) + 1]
    width, height = shown
    assert f'width="{width}" height="{height}"' in img, img
    assert f"width:{width}px; height:{height}px;" in img, img
