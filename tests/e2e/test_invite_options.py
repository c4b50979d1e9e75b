"""Issue 20 on the real stack through /api/v1 and the bus: Link Expiry (expires_in_days)
and Personal Message from the API and from invitation.requested reach the email, the list
(with its email filter) and the public events; a Resend keeps both."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.flows import Api, envelope, listening, publish_event, unique_email
from tests.support.smtp import html_part, text_part

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def length(inv: dict[str, Any]) -> timedelta:
    return datetime.fromisoformat(inv["expires_at"]) - datetime.fromisoformat(inv["sent_at"])


async def test_api_invite_with_expiry_and_message_then_resend(stack: Stack, api: Api) -> None:
    portal = await api.portal(f"Options {uuid.uuid4().hex[:6]}")
    email = unique_email("options")
    note = "Dear client,\n<img src=x onerror=alert(1)> see you Monday."
    path = f"/portals/{portal['id']}/invitations"
    async with listening(stack, "invitation.created", "invitation.resent") as listener:
        code, body = await api.call(
            "POST", path, {"email": email, "expires_in_days": 21, "personal_message": note}
        )
        assert code == 201, body
        inv = body["invitation"]
        assert inv["expires_in_days"] == 21 and length(inv) == timedelta(days=21)
        created = await listener.wait_for(
            lambda e: e["data"].get("invitation_id") == inv["id"], "invitation.created"
        )
        assert created["data"]["expires_in_days"] == 21

        [message] = await stack.sink.wait_for(email)
        assert "&lt;img src=x onerror=alert(1)&gt; see you Monday." in html_part(message)
        assert "<img src=x" not in html_part(message)
        assert note in text_part(message).replace("\r\n", "\n")
        assert "(21 days after it was sent)" in text_part(message)

        code, page = await api.call("GET", f"/invitations?email={email.upper()}")
        assert code == 200, page
        assert [(i["id"], i["expires_in_days"]) for i in page["items"]] == [(inv["id"], 21)]
        assert page["items"][0]["personal_message"] == note

        code, resent = await api.call("POST", f"/invitations/{inv['id']}/resend")
        assert code == 200 and resent["expires_in_days"] == 21, resent
        event = await listener.wait_for(
            lambda e: e["type"] == "invitation.resent" and e["data"]["invitation_id"] == inv["id"],
            "invitation.resent",
        )
        assert event["data"]["expires_in_days"] == 21
        again = (await stack.sink.wait_for(email, count=2))[-1]
        assert note in text_part(again).replace("\r\n", "\n")

    for bad, words in (
        ({"expires_in_days": 10}, "7, 14, 21 or 30"),
        ({"personal_message": "m" * 1001}, "1,000 characters"),
    ):
        code, body = await api.call("POST", path, {"email": unique_email("bad"), **bad})
        assert code == 422 and words in body["error"]["message"], body
    code, body = await api.call("GET", "/invitations?email=not-an-address")
    assert code == 422, body


async def test_invitation_requested_with_expiry_and_message(stack: Stack, api: Api) -> None:
    portal = await api.portal(f"Options CRM {uuid.uuid4().hex[:6]}")
    email = unique_email("crm-options")
    async with listening(stack, "invitation.*") as listener:
        request = envelope(
            {
                "portal_id": portal["id"],
                "email": email,
                "idempotency_key": f"crm-{uuid.uuid4().hex}",
                "expires_in_days": 7,
                "personal_message": "From your account manager: welcome!",
            }
        )
        await publish_event(stack, request)
        created = await listener.wait_for(
            lambda e: (
                e["correlation_id"] == request["correlation_id"]
                and e["type"] != "invitation.requested"
            ),
            "the answer",
        )
        assert created["type"] == "invitation.created", created
        assert created["data"]["expires_in_days"] == 7
        [message] = await stack.sink.wait_for(email)
        assert "From your account manager: welcome!" in html_part(message)

        refused = envelope(
            {
                "portal_id": portal["id"],
                "email": unique_email("crm-refused"),
                "idempotency_key": f"crm-{uuid.uuid4().hex}",
                "expires_in_days": 45,
            }
        )
        await publish_event(stack, refused)
        answer = await listener.wait_for(
            lambda e: (
                e["correlation_id"] == refused["correlation_id"]
                and e["type"] != "invitation.requested"
            ),
            "the refusal",
        )
        assert answer["type"] == "invitation.rejected"
        assert answer["data"]["reason"] == "invalid_expires_in_days"
