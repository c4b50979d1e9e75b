"""A leaked API key can't mail the world: past INVITATIONS_REQUESTS_PER_KEY_HOUR in any
hour, the real stack answers the key's invites 429 integration_rate_limited with
Retry-After, a batch's rows past the cap are rejected alone with that reason, nothing
more is emailed, and the refusals are counted for the alert under the key."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.faults.support import Api
from tests.support.smtp import SmtpSink
from tests.support.stack import Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CAP = 3


@pytest.fixture(scope="module")
def capped_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
async def capped_stack(capped_sink: SmtpSink) -> AsyncIterator[Stack]:
    async with running_stack(capped_sink, INVITATIONS_REQUESTS_PER_KEY_HOUR=str(CAP)) as running:
        yield running


async def test_a_key_past_its_cap_sends_nothing_more(capped_stack: Stack) -> None:
    api = Api(capped_stack)
    try:
        portal = await api.create_portal("Key cap")
        tag = uuid.uuid4().hex[:8]
        emails = [f"cap-{tag}-{n}@example.com" for n in range(CAP + 3)]
        for email in emails[:2]:
            status, body = await api.call(
                "POST", f"/api/v1/portals/{portal['id']}/invitations", {"email": email}
            )
            assert status == 201, body
        rows = {"invitations": [{"email": email} for email in emails[2:5]]}
        status, body = await api.call(
            "POST", f"/api/v1/portals/{portal['id']}/invitations/batch", rows
        )
        assert status == 200, body
        assert [(r["status"], r.get("reason")) for r in body["results"]] == [
            ("created", None),
            ("rejected", "integration_rate_limited"),
            ("rejected", "integration_rate_limited"),
        ]
        url = f"{capped_stack.public_url}/api/v1/portals/{portal['id']}/invitations"
        async with api.session.post(url, json={"email": emails[5]}) as response:
            assert response.status == 429
            # Counted by the minute: the minute that filled the cap leaves the hour.
            assert 3400 <= int(response.headers["Retry-After"]) <= 3600
            error = (await response.json())["error"]
        assert error["code"] == "integration_rate_limited"
        assert "INVITATIONS_REQUESTS_PER_KEY_HOUR" in error["message"]
        await capped_stack.sink.wait_for_each(emails[:3], timeout=60)
        assert not {m["To"] for m in capped_stack.sink.messages} & set(emails[3:])
        metrics_url = capped_stack["invitations"].management_url + "/metrics"
        async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
            metrics = await response.text()
        assert 'clientpress_invitation_requests_capped_total{sender="key:bootstrap"} 2.0' in metrics
    finally:
        await api.close()
