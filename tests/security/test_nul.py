"""The NUL character (U+0000), which PostgreSQL's text can't hold: in a JSON body, a query
string or an event, it is refused where it comes in, naming the field, instead of failing
later as a database error (a 503 from the JSON API, an event retried until dead-lettered)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import orjson
import pytest

from tests.security.conftest import api
from tests.security.flows import invitation_requested, new_portal, publish_envelope
from tests.support.stack import Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NUL_MESSAGE = "can't contain the NUL character (\\u0000)"


async def test_the_json_api_refuses_nul_with_422_naming_the_field(
    stack: Stack, admin: Browser
) -> None:
    portal = await new_portal(admin)
    calls = [
        ("POST", "/api/v1/portals", {"title": "Acme\u0000"}, "title"),
        ("PATCH", f"/api/v1/portals/{portal['id']}", {"content": "Hi\u0000there"}, "content"),
        ("PUT", "/api/v1/settings/branding", {"agency_name": "Acme\u0000"}, "agency_name"),
        ("POST", "/api/v1/keys", {"name": "CRM\u0000", "scopes": ["portals:read"]}, "name"),
        ("GET", "/api/v1/portals?q=Ac%00me", None, "q"),
        ("GET", "/api/v1/users?q=%00", None, "q"),
    ]
    for method, path, body, field in calls:
        status, answer = await api(admin, method, path, body)
        assert status == 422, (method, path, answer)
        assert answer["error"]["code"] == "invalid_character"
        assert answer["error"]["message"] == f"{field}: {NUL_MESSAGE}.", answer
    # Written as text, a backslash and "u0000" are six ordinary characters.
    status, answer = await api(
        admin, "PATCH", f"/api/v1/portals/{portal['id']}", {"content": "Type \\u0000 here"}
    )
    assert status == 200 and answer["content"] == "Type \\u0000 here"


async def test_a_batch_row_holding_nul_is_rejected_alone(stack: Stack, admin: Browser) -> None:
    portal = await new_portal(admin)
    tag = uuid.uuid4().hex[:8]
    rows = [
        {"email": f"first-{tag}@example.com"},
        {"email": f"second-{tag}@example.com", "name": "Ada\u0000"},
        {"email": f"third-{tag}@example.com", "personal_message": "Hello\u0000"},
        {"email": f"fourth-{tag}@example.com", "personal_message": "Hi"},
    ]
    status, answer = await api(
        admin, "POST", f"/api/v1/portals/{portal['id']}/invitations/batch", {"invitations": rows}
    )
    assert status == 200, answer
    verdicts = [(r["status"], r.get("reason"), r.get("message")) for r in answer["results"]]
    assert verdicts == [
        ("created", None, None),
        ("rejected", "invalid_character", f"The name {NUL_MESSAGE}."),
        ("rejected", "invalid_character", f"The Personal Message {NUL_MESSAGE}."),
        ("created", None, None),
    ]


async def test_an_event_holding_nul_is_dead_lettered_at_once_not_retried(
    stack: Stack, admin: Browser
) -> None:
    portal = await new_portal(admin)
    envelope = invitation_requested(
        {
            "portal_slug": portal["slug"] + "\u0000",
            "email": f"nul-{uuid.uuid4().hex[:8]}@example.com",
            "idempotency_key": f"crm-{uuid.uuid4()}",
        }
    )
    event_id = envelope["id"]
    await publish_envelope(stack, envelope)
    log: Path = stack.services["invitations"].log_path
    deadline = time.monotonic() + 20
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        lines = [orjson.loads(line) for line in log.read_text().splitlines() if event_id in line]
        if any(line["event"] == "event_malformed_dead_lettered" for line in lines):
            break
        await asyncio.sleep(0.1)
    events = [line["event"] for line in lines]
    assert events == ["event_malformed_dead_lettered"], events
    assert "data.portal_slug" in str(lines[0]["reason"])


async def test_a_nul_typed_into_a_page_is_dropped_not_an_english_refusal(
    stack: Stack, admin: Browser
) -> None:
    """A person can't see a NUL, pasted along with text: the pages drop it from what was
    typed (the JSON API and events, written by programs, are told instead)."""
    portal = await new_portal(admin)
    url = f"{stack.public_url}/admin/portals/{portal['id']}"
    _, _, page = await admin.get(url)
    code, _, page = await admin.submit(
        url, page, "Save Portal", {"Title": "Acme\x00 Ltd", "Content": "Hello\x00 there"}
    )
    assert code == 200 and "NUL" not in page, page[:2000]
    status, saved = await api(admin, "GET", f"/api/v1/portals/{portal['id']}")
    assert status == 200 and (saved["title"], saved["content"]) == ("Acme Ltd", "Hello there")
