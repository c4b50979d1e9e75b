"""Webhooks on the real stack: an endpoint added through /api/v1/webhooks receives the
lifecycle of an invitation made through the API (with its Idempotency-Key) and accepted
from the email, signed per Standard Webhooks; the delivery log, Redeliver, rotation and
deletion through the gateway."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.e2e.flows import Api, accept_from_email, unique_email
from tests.support.smtp import accept_link
from tests.support.stack import API_KEY, Browser, Stack
from tests.support.webhooks import Received, Receiver, receiver, verify

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

EVENTS = ["invitation.created", "invitation.accepted", "portal.access.granted"]


@pytest.fixture
async def hook() -> AsyncIterator[Receiver]:
    # Another loopback address than the stack's: the stack sets WEBHOOKS_ALLOW_PRIVATE.
    async with receiver("127.0.0.2") as got:
        yield got


async def call(stack: Stack, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as session,
        session.request(method, f"{stack.public_url}/api/v1{path}", json=body) as response,
    ):
        return response.status, (await response.json() if response.status != 204 else None)


def about(key: str, value: str, event_type: str) -> Callable[[list[Received]], bool]:
    def ready(received: list[Received]) -> bool:
        return any(
            r.json["type"] == event_type and r.json["data"].get(key) == value for r in received
        )

    return ready


def the(received: list[Received], key: str, value: str, event_type: str) -> Received:
    [found] = [
        r for r in received if r.json["type"] == event_type and r.json["data"].get(key) == value
    ]
    return found


async def test_an_invitation_made_through_the_api_reaches_the_webhook_with_its_key(
    stack: Stack, api: Api, browser: Browser, hook: Receiver
) -> None:
    status, endpoint = await call(stack, "POST", "/webhooks", {"url": hook.url, "events": EVENTS})
    assert status == 201, endpoint
    assert set(endpoint) >= {"id", "url", "events", "secret"}
    assert endpoint["url"] == hook.url and endpoint["events"] == EVENTS
    secret = endpoint["secret"]
    assert secret.startswith("whsec_")
    status, listed = await call(stack, "GET", "/webhooks")
    assert status == 200 and any(e["id"] == endpoint["id"] for e in listed["items"])
    assert secret not in str(listed), "the secret is shown once, when the endpoint is added"

    portal = await api.portal(f"Webhooks {uuid.uuid4().hex[:6]}")
    email = unique_email("hook")
    key = f"crm-{uuid.uuid4().hex}"
    async with api.session.post(
        f"{api.base}/portals/{portal['id']}/invitations",
        json={"email": email},
        headers={"Idempotency-Key": key},
    ) as response:
        assert response.status == 201, await response.text()
        invitation = (await response.json())["invitation"]

    await hook.wait_for(about("invitation_id", invitation["id"], "invitation.created"))
    made = the(hook.received, "invitation_id", invitation["id"], "invitation.created")
    assert verify(secret, made)
    assert made.json["data"]["idempotency_key"] == key
    assert made.json["data"]["email"] == email and made.json["data"]["portal_id"] == portal["id"]

    code, _, _ = await accept_from_email(stack, browser, email)
    assert code == 200
    await hook.wait_for(about("invitation_id", invitation["id"], "invitation.accepted"))
    accepted = the(hook.received, "invitation_id", invitation["id"], "invitation.accepted")
    assert verify(secret, accepted)
    # The key follows the invitation through its lifecycle.
    assert accepted.json["data"]["idempotency_key"] == key
    user_id = accepted.json["data"]["user_id"]
    await hook.wait_for(about("user_id", user_id, "portal.access.granted"))
    granted = the(hook.received, "user_id", user_id, "portal.access.granted")
    assert verify(secret, granted) and granted.json["data"]["portal_id"] == portal["id"]
    assert granted.json["data"]["idempotency_key"] == key

    # No secret of any kind travels: not the signing secret, not the accept link's token.
    link_token = accept_link((await stack.sink.wait_for(email))[-1]).split("token=", 1)[1]
    assert len(link_token) > 20
    for got in hook.received:
        assert secret not in got.body.decode() and link_token not in got.body.decode()
        assert not {"token", "link", "password"} & set(got.json["data"])

    status, log = await call(stack, "GET", f"/webhooks/{endpoint['id']}/deliveries")
    assert status == 200
    mine = {d["event_type"]: d for d in log["items"]}
    assert set(mine) >= set(EVENTS)
    assert all(d["status"] == "delivered" and d["response_code"] == 200 for d in mine.values())

    delivery = mine["invitation.created"]
    path = f"/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/redeliver"
    status, queued = await call(stack, "POST", path)
    assert status == 202 and queued["id"] == delivery["id"]

    def twice(received: list[Received]) -> bool:
        return sum(r.id == made.id for r in received) >= 2

    again = [r for r in await hook.wait_for(twice) if r.id == made.id][-1]
    assert again.body == made.body and verify(secret, again)

    status, rotated = await call(stack, "POST", f"/webhooks/{endpoint['id']}/rotate-secret")
    assert status == 200 and rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != secret

    status, _ = await call(stack, "DELETE", f"/webhooks/{endpoint['id']}")
    assert status == 204
    status, listed = await call(stack, "GET", "/webhooks")
    assert all(e["id"] != endpoint["id"] for e in listed["items"])
    status, body = await call(stack, "DELETE", f"/webhooks/{endpoint['id']}")
    assert status == 404 and body["error"]["code"] == "webhook_not_found"


async def test_the_webhooks_api_validates_and_needs_the_key(stack: Stack) -> None:
    for body in (
        {"url": "https://example.com/hooks", "events": ["invitation.nope"]},
        {"url": "https://example.com/hooks", "events": []},
        {"url": "https://example.com/hooks"},
        {"url": "gopher://example.com/", "events": ["invitation.created"]},
    ):
        status, answer = await call(stack, "POST", "/webhooks", body)
        assert status == 422, (body, answer)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stack.public_url}/api/v1/webhooks") as response,
    ):
        assert response.status == 401
    status, doc = await call(stack, "GET", "/openapi.json")
    assert "/webhooks/{id}/deliveries/{delivery_id}/redeliver" in doc["paths"]
    assert "WebhookWithSecret" in doc["components"]["schemas"]
