"""Erasing a person on the whole stack (docs/reliability.md "Erasing a person"): invite →
accept → Erase on Users → no column of any schema names their address, they can't log in,
and the address can be invited again as a new person."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import asyncpg
import pytest

from tests.e2e.conftest import Browser, Stack
from tests.e2e.flows import CLIENT_PASSWORD, Api, accept_from_email, eventually, unique_email
from tests.e2e.test_portal_access import login_location, user_id_of
from tests.support.erasure import places_naming
from tests.support.stack import db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SCHEMAS = ("identity", "portals", "invitations", "mailer", "gateway")


async def _places(stack: Stack, email: str) -> list[str]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return [f"{s}.{p}" for s in SCHEMAS for p in await places_naming(conn, s, email)]
    finally:
        await conn.close()


@pytest.mark.parametrize("tag", ["erase", "Ärger-ΝΙΚΟΣ"])
async def test_an_erased_person_leaves_no_address_and_can_be_invited_again(
    stack: Stack, api: Api, admin: Browser, tag: str
) -> None:
    """Also for an address with capitals outside ASCII (a final sigma), found in the bytes
    of outbox bodies and sealed records too (tests/support/erasure.py)."""
    first = await api.portal(f"Erase Portal {tag}")
    second = await api.portal(f"Erase Other Portal {tag}")
    email = unique_email(tag)
    code, body = await api.invite(first["id"], email)
    assert code == 201, body
    client = Browser(stack.public_url)
    try:
        _, url, _ = await accept_from_email(stack, client, email)
        assert "/client-portal/" in url
        user_id = await user_id_of(api, email)
        # A second invitation, still pending, to another portal.
        code, body = await api.invite(second["id"], email)
        assert code == 201, body
        await stack.sink.wait_for(email, count=2)

        async def logged() -> bool | None:
            rows = await db_fetch(
                stack,
                "SELECT 1 FROM identity.activity WHERE lower(object_label) = lower($1)",
                email,
            )
            return True if len(rows) >= 2 else None

        await eventually(logged, "both invitations in the Activity log")
        assert "identity.users.email" in await _places(stack, email)

        code, url, html = await admin.get("/admin/users?q=" + quote(email))
        assert code == 200 and email in html
        code, url, html = await admin.submit(url, html, "Erase")
        assert code == 200 and f"User {email} erased" in html, html[:1000]

        async def nowhere() -> bool | None:
            return True if not await _places(stack, email) else None

        try:
            await eventually(nowhere, "no schema to name the erased address")
        except AssertionError:
            raise AssertionError(f"still named in {await _places(stack, email)}") from None

        code, url, html = await client.get(f"/client-portal/{first['slug']}/")
        assert urlsplit(url).path == "/login", url  # the session ended with the account
        status, _ = await login_location(stack, email, CLIENT_PASSWORD)
        assert status == 401
        code, portal = await api.call("GET", f"/portals/{first['id']}")
        assert portal["client_id"] is None and user_id not in portal["sub_client_ids"]
        code, page = await api.call("GET", f"/invitations?portal_id={second['id']}")
        assert [i["status"] for i in page["items"]] == ["revoked"]
    finally:
        await client.close()

    # The address is free: a new invitation makes a new person.
    code, body = await api.invite(first["id"], email)
    assert code == 201, body
    await stack.sink.wait_for(email, count=3)
    again = Browser(stack.public_url)
    try:
        _, url, _ = await accept_from_email(stack, again, email)
        assert "/client-portal/" in url
        assert await user_id_of(api, email) != user_id
    finally:
        await again.close()
