"""Tokens and passwords stay secret: stored only hashed, single-use, never in a log line,
never in a public event, and never sent on in a Referer."""

from __future__ import annotations

import asyncio
import re
import time

import asyncpg
import orjson
import pytest

from tests.security.conftest import PublicEvents, Secrets
from tests.security.flows import new_client
from tests.support.smtp import html_part
from tests.support.stack import Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ARGON2 = "$argon2"
# Mail jobs carry the link to the mailer, which keeps them until SMTP took them
# (at-least-once delivery): the only place a raw one-time token may rest.
MAIL_HOLDERS = {"mailer"}


async def dump(conn: asyncpg.Connection) -> dict[str, str]:
    """Every row of every table of the services' schemas, as text."""
    tables = await conn.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema IN ('identity', 'portals', 'invitations', 'mailer') "
        "AND table_type = 'BASE TABLE'"
    )
    assert len(tables) >= 8
    text = {}
    for t in tables:
        name = f'"{t["table_schema"]}"."{t["table_name"]}"'
        rows = await conn.fetch(f"SELECT x::text AS row FROM {name} x")
        text[f"{t['table_schema']}.{t['table_name']}"] = "\n".join(r["row"] for r in rows)
    return text


async def _reset_token(stack: Stack, browser: Browser, email: str) -> str:
    before = len(stack.sink.to(email))
    _, url, html = await browser.get("/forgot-password")
    await browser.submit(url, html, "Send Reset Link", {"Email": email})
    mails = await stack.sink.wait_for(email, before + 1)
    found = re.search(r"/reset-password\?token=([A-Za-z0-9_-]+)", html_part(mails[-1]))
    assert found
    return found.group(1)


async def test_tokens_are_stored_hashed_and_single_use(
    stack: Stack, admin: Browser, anonymous: Browser, secrets_seen: Secrets
) -> None:
    client = await new_client(stack, admin, secrets_seen)
    try:
        invite_token = client.link.split("token=", 1)[1]
        session = next(c.value for c in client.browser.session.cookie_jar if c.key == "cp_session")
        reset_token = await _reset_token(stack, anonymous, client.email)
        secrets_seen.add(session, reset_token)
        conn = await asyncpg.connect(stack.database_url)
        try:
            tables = await dump(conn)
        finally:
            await conn.close()
        for secret, kind in (
            (invite_token, "invitation"),
            (reset_token, "reset"),
            (session, "session"),
        ):
            where = [t for t, text in tables.items() if secret in text]
            holders = {t.split(".")[0] for t in where}
            allowed = MAIL_HOLDERS if kind != "session" else set()
            assert holders <= allowed, (kind, where)
        # The invitation link is spent: a second accept finds it used.
        code, _, html = await anonymous.get(client.link)
        assert "already been used" in html and "Set Password" not in html
    finally:
        await client.browser.close()


async def test_the_accept_and_reset_pages_send_no_referrer(
    stack: Stack, admin: Browser, anonymous: Browser
) -> None:
    for path in ("/invitations/accept?token=abc", "/reset-password?token=abc"):
        async with anonymous.session.get(stack.public_url + path) as response:
            assert response.headers["Referrer-Policy"] == "no-referrer", path
    async with anonymous.session.get(stack.public_url + "/login") as response:
        assert response.headers["Referrer-Policy"] in {"no-referrer", "same-origin"}


async def test_no_secret_in_any_log_line_or_public_event(
    stack: Stack,
    admin: Browser,
    anonymous: Browser,
    public_events: PublicEvents,
    secrets_seen: Secrets,
) -> None:
    """Runs a flow of its own (so it stands alone) and checks every secret any test of
    this session handled."""
    client = await new_client(stack, admin, secrets_seen)
    await client.browser.close()
    secrets_seen.add(await _reset_token(stack, anonymous, client.email))
    # The relay publishes after commit: wait (bounded) until the accept reached the bus.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if any(k == "invitation.accepted" for k, _ in public_events.bodies):
            break
        await asyncio.sleep(0.1)
    keys = {k for k, _ in public_events.bodies}
    assert {"invitation.created", "invitation.accepted", "portal.created"} <= keys, keys
    assert not any(k.startswith("mail.requested") for k in keys), keys
    secrets = sorted(secrets_seen.values)
    assert len(secrets) >= 4
    for key, body in public_events.bodies:
        text = body.decode()
        orjson.loads(body)  # JSON only
        leaked = [s[:6] for s in secrets if s in text]
        assert not leaked and ARGON2 not in text and "token=" not in text, (key, leaked)
    for name, service in stack.services.items():
        log = service.log_path.read_text(errors="replace")
        assert log.strip(), name
        leaked = [s[:6] for s in secrets if s in log]
        assert not leaked and ARGON2 not in log, (name, leaked)
