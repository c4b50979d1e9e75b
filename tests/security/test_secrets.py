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


def readable(value: object) -> str:
    """A column value as someone reading the table would see it: bytea decoded as UTF-8
    text, JSON (in text or bytea) parsed and flattened, so nothing hides in an encoding."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        if isinstance(parsed, (dict, list)):
            return value + "\n" + readable(parsed)
        return value
    if isinstance(value, dict):
        return "\n".join(f"{k}={readable(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "\n".join(readable(v) for v in value)
    return str(value)


async def dump(conn: asyncpg.Connection) -> dict[str, str]:
    """Every row of every table of every schema of the installation (outboxes and inboxes
    included), decoded."""
    tables = await conn.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        " AND table_type = 'BASE TABLE'"
    )
    assert {"identity", "portals", "invitations", "mailer"} <= {t["table_schema"] for t in tables}
    text = {}
    for t in tables:
        name = f'"{t["table_schema"]}"."{t["table_name"]}"'
        rows = await conn.fetch(f"SELECT * FROM {name}")
        text[f"{t['table_schema']}.{t['table_name']}"] = "\n".join(
            readable(v) for row in rows for v in row.values()
        )
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
            # Not even the mail job that carried it: sealed in the outboxes, cleared from
            # the mailer's row once sent.
            assert not where, (kind, where)
        # The outboxes did hold those mail jobs (so the search looked where they were).
        assert "mail.requested" in tables["invitations.outbox"]
        assert "mail.requested" in tables["identity.outbox"]
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
