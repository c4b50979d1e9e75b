"""An invitation revoked or resent while its email waits for a retry (the SMTP server
answering 451) on the real stack: once the server answers again, a revoked invitation's
email never arrives, and a resent one's arrives once, with the new link."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.flows import Api, eventually, unique_email
from tests.support.smtp import accept_link
from tests.support.stack import db_fetch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# Well past the next retry (MAILER_RETRY_BASE_SECONDS 0.2 on the stack, a few tries in).
RETRY_WINDOW_SECONDS = 4.0


@pytest.fixture
async def deferring(stack: Stack) -> AsyncIterator[None]:
    """The SMTP server answers 451 until the test lets it go (or ends)."""
    stack.sink.sink.fail_with = "451 4.3.0 Try again later"
    yield
    stack.sink.sink.fail_with = None


async def _invited_and_retrying(api: Api, stack: Stack, tag: str) -> tuple[dict[str, Any], str]:
    portal = await api.portal(f"Withdraw {uuid.uuid4().hex[:6]}")
    email = unique_email(tag)
    code, body = await api.invite(portal["id"], email)
    assert code == 201, body
    invitation = body["invitation"]

    async def retrying() -> dict[str, Any] | None:
        code, shown = await api.call("GET", f"/invitations/{invitation['id']}")
        assert code == 200, shown
        return shown if shown["delivery"] == "retrying" else None

    return await eventually(retrying, "the invitation's email waiting for a retry"), email


async def _delivery(stack: Stack, mail_id: uuid.UUID) -> dict[str, Any]:
    [row] = await db_fetch(
        stack, "SELECT status, context FROM mailer.deliveries WHERE mail_id = $1", mail_id
    )
    return dict(row)


async def _last_mail_id(stack: Stack, invitation_id: str) -> uuid.UUID:
    [row] = await db_fetch(
        stack,
        "SELECT last_mail_id FROM invitations.invitations WHERE id = $1",
        uuid.UUID(invitation_id),
    )
    return uuid.UUID(str(row["last_mail_id"]))


async def test_a_revoked_invitations_email_never_arrives(
    stack: Stack, api: Api, deferring: None
) -> None:
    invitation, email = await _invited_and_retrying(api, stack, "withdrawn")
    mail_id = await _last_mail_id(stack, invitation["id"])

    code, body = await api.call("POST", f"/invitations/{invitation['id']}/revoke")
    assert code == 200 and body["status"] == "revoked", body

    async def withdrawn() -> dict[str, Any] | None:
        row = await _delivery(stack, mail_id)
        return row if row["status"] == "withdrawn" else None

    row = await eventually(withdrawn, "the mailer to withdraw the email")
    assert row["context"] is None  # no link at rest
    stack.sink.sink.fail_with = None
    await asyncio.sleep(RETRY_WINDOW_SECONDS)
    assert stack.sink.to(email) == []
    code, shown = await api.call("GET", f"/invitations/{invitation['id']}")
    assert shown["delivery"] == "withdrawn" and shown["delivery_next_attempt_at"] is None


async def test_a_resent_invitation_gets_one_email_with_the_new_link(
    stack: Stack, api: Api, deferring: None
) -> None:
    invitation, email = await _invited_and_retrying(api, stack, "resent-withdrawn")
    old_mail = await _last_mail_id(stack, invitation["id"])

    code, body = await api.call("POST", f"/invitations/{invitation['id']}/resend")
    assert code == 200, body
    new_mail = await _last_mail_id(stack, invitation["id"])
    assert new_mail != old_mail

    async def withdrawn() -> dict[str, Any] | None:
        row = await _delivery(stack, old_mail)
        return row if row["status"] == "withdrawn" else None

    await eventually(withdrawn, "the mailer to withdraw the first link's email")
    stack.sink.sink.fail_with = None
    [message] = await stack.sink.wait_for(email)
    await asyncio.sleep(RETRY_WINDOW_SECONDS)
    assert len(stack.sink.to(email)) == 1
    # The link in it is the new one: it opens the set-password form.
    link = accept_link(message)
    token = link.split("token=", 1)[1]

    async def sent() -> bool | None:
        _, shown = await api.call("GET", f"/invitations/{invitation['id']}")
        return True if shown["delivery"] == "sent" else None

    await eventually(sent, "the invitation to show its new email sent")
    async with api.session.get(f"{stack.public_url}/invitations/accept?token={token}") as page:
        assert page.status == 200
        assert "Set Password" in await page.text()
    assert (await _delivery(stack, new_mail))["status"] == "sent"
