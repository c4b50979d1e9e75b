"""Characters that make text lie (libs/common/text.py), end to end: a bidirectional
override or isolate in a one-line field is refused the same way by the JSON API, the
pages, a batch and an event; invisible characters are dropped; the format characters
real names need reach the email, the screens and the events as they were written."""

# Real names in Arabic, Persian and Hebrew script: their letters are the point.
# ruff: noqa: RUF001

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from tests.security.conftest import PublicEvents, api, cookie, unique_email
from tests.security.flows import answer_to, invitation_requested, new_portal, publish_envelope
from tests.support.smtp import html_part, text_part
from tests.support.stack import Browser, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

RLO = "\u202e"
REORDERS = "can't contain a character that changes the order the text is shown in"
RLO_NAMED = "(U+202E RIGHT-TO-LEFT OVERRIDE)."
# Persian (a ZWNJ inside the surname), Hebrew (an RLM), an emoji ZWJ sequence.
PERSIAN = "مریم\u200cزاده"
HEBREW = "שרה כהן\u200f"
TECHNOLOGIST = "👩\u200d💻"


async def with_key(stack: Stack, key: str, method: str, path: str, body: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, stack.public_url + path, json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def new_key(admin: Browser, name: str) -> dict[str, Any]:
    scopes = ["invitations:write", "invitations:read"]
    status, made = await api(admin, "POST", "/api/v1/keys", {"name": name, "scopes": scopes})
    assert status == 201, made
    return dict(made)


async def test_the_json_api_refuses_a_bidi_override_in_one_line_fields_naming_it(
    stack: Stack, admin: Browser
) -> None:
    """Before, each of these was saved: a Title "Invoice <RLO>gnp.exe" read "Invoice
    exe.png" on every screen and in the email's subject."""
    portal = await new_portal(admin)
    key = (await new_key(admin, f"CRM {uuid.uuid4().hex[:6]}"))["key"]
    invite_path = f"/api/v1/portals/{portal['id']}/invitations"
    calls: list[tuple[str, str, dict[str, Any], str, str, str]] = [
        ("POST", "/api/v1/portals", {"title": f"Invoice {RLO}gnp.exe"}, "invalid_character", "The Title", "title"),
        ("PATCH", f"/api/v1/portals/{portal['id']}", {"title": "\u2067Acme"}, "invalid_character", "The Title", "title"),
        ("POST", "/api/v1/keys", {"name": f"CRM{RLO}", "scopes": ["portals:read"]}, "invalid_character", "The key's name", "name"),
        ("PUT", "/api/v1/settings/branding", {"agency_name": f"Acme{RLO} Support"}, "invalid_agency_name", "The Agency Name", "agency_name"),
    ]  # fmt: skip
    for method, path, body, code, field, name in calls:
        status, answer = await api(admin, method, path, body)
        assert status == 422, (method, path, answer)
        assert answer["error"]["code"] == code, answer
        # Which field, and which character, for a program (and a form) to read.
        assert answer["error"].get("field") == name, answer
        message = answer["error"]["message"]
        assert message.startswith(f"{field} {REORDERS}") and "RIGHT-TO-LEFT" in message + "\u2067"
    inviter = {"email": unique_email(), "invited_by": f"Acme Support{RLO} moc.live@"}
    status, answer = await with_key(stack, key, "POST", invite_path, inviter)
    assert (status, answer["error"]["code"]) == (422, "invalid_character"), answer
    assert answer["error"]["message"] == f"The inviter's name (invited_by) {REORDERS} {RLO_NAMED}"
    assert (answer["error"]["field"], answer["error"]["character"]) == ("invited_by", "U+202E")
    # A message of several lines may change direction, but must close it on its line.
    note = {"email": unique_email(), "personal_message": f"Pay to {RLO}4321 NABI\nThanks"}
    status, answer = await api(admin, "POST", invite_path, note)
    assert (status, answer["error"]["code"]) == (422, "invalid_character"), answer
    assert "The Personal Message has a character" in answer["error"]["message"]
    assert answer["error"]["field"] == "personal_message", answer
    footer = {"footer_text": f"Acme Ltd{RLO}\n1 High Street"}
    status, answer = await api(admin, "PUT", "/api/v1/settings/branding", footer)
    assert (status, answer["error"]["code"]) == (422, "invalid_footer_text"), answer
    status, listed = await api(admin, "GET", f"/api/v1/invitations?portal_id={portal['id']}")
    assert status == 200 and listed["items"] == []  # nothing was sent


async def test_real_names_reach_the_email_screens_and_events_as_written(
    stack: Stack, admin: Browser, public_events: PublicEvents
) -> None:
    """ZWNJ, ZWJ and RLM are writing: before, each became a space ("مریم زاده",
    "👩 💻"). Invisible characters go (a BOM from a CSV, a zero-width space from a web
    page), and in the HTML part each name is isolated."""
    portal = await new_portal(admin, title=f"\ufeffAc\u200bme {HEBREW} {uuid.uuid4().hex[:4]}")
    title = portal["title"]
    assert title.startswith(f"Acme {HEBREW} ") and "\u200b" not in title
    key = await new_key(admin, f"CRM {TECHNOLOGIST}\u200b")
    assert key["name"] == f"CRM {TECHNOLOGIST}"
    email = unique_email("names")
    body = {
        "email": email,
        "invited_by": f"{PERSIAN}\u2060",
        "personal_message": f"سلام {TECHNOLOGIST}\u2028\u2067{HEBREW}\u2069",
    }
    status, made = await with_key(
        stack, key["key"], "POST", f"/api/v1/portals/{portal['id']}/invitations", body
    )
    assert status == 201, made
    invitation = made["invitation"]
    assert invitation["invited_by"] == PERSIAN
    [message] = await stack.sink.wait_for(email)
    assert message["Subject"].startswith(f"You're invited to {title} on ")
    text, html = text_part(message).replace("\r\n", "\n"), html_part(message)
    assert f'{PERSIAN} has invited you to your client portal "{title}"' in text
    assert f"سلام {TECHNOLOGIST}\n\u2067{HEBREW}\u2069" in text
    assert f"<bdi>{PERSIAN}</bdi> has invited you to your client portal" in html
    assert f"<strong><bdi>{title}</bdi></strong>" in html
    assert 'dir="auto">سلام' in html
    created = await answer_to(stack, public_events, "invitation.created", invitation["id"])
    assert created["data"]["invited_by"] == PERSIAN
    status, page = await api(admin, "GET", f"/api/v1/invitations?portal_id={portal['id']}")
    assert [(i["invited_by"], i["portal_title"]) for i in page["items"]] == [(PERSIAN, title)]
    _, _, screen = await admin.get(f"{stack.public_url}/admin/invitations")
    assert f'<td dir="auto">{PERSIAN}</td>' in screen


async def test_a_batch_applies_the_same_rule_to_each_row_from_json_or_csv(
    stack: Stack, admin: Browser
) -> None:
    portal = await new_portal(admin)
    path = f"/api/v1/portals/{portal['id']}/invitations/batch"
    tag = uuid.uuid4().hex[:8]
    rows = [
        {"email": f"a-{tag}@example.com", "name": f"Ada{RLO}"},
        {"email": f"b-{tag}@example.com", "name": f"\ufeff{PERSIAN}\u200b"},
        {"email": f"c-{tag}@example.com", "personal_message": "\u2069Hi"},
        {"email": f"d\u200b-{tag}@example.com"},
    ]
    status, answer = await api(admin, "POST", path, {"invitations": rows})
    assert status == 200, answer
    verdicts = [(r["status"], r.get("reason")) for r in answer["results"]]
    assert verdicts == [
        ("rejected", "invalid_character"),
        ("created", None),
        ("rejected", "invalid_character"),
        ("rejected", "invalid_email"),
    ]
    assert answer["results"][0]["message"] == f"The name {REORDERS} {RLO_NAMED}"
    status, page = await api(
        admin, "GET", f"/api/v1/invitations/{answer['results'][1]['invitation_id']}"
    )
    assert status == 200 and page["name"] == PERSIAN, page
    # The same cells in a CSV file (Excel's BOM first): the same verdicts.
    csv = "\ufeffemail,name\r\n" + "".join(
        f'x{r["email"]},"{r.get("name", "")}"\r\n' for r in rows[:2]
    )
    async with admin.session.post(
        stack.public_url + path,
        data=csv.encode(),
        headers={"Content-Type": "text/csv", "X-CSRF-Token": cookie(admin, "cp_csrf") or ""},
    ) as response:
        assert response.status == 200, await response.text()
        from_csv = await response.json()
    assert [(r["status"], r.get("reason")) for r in from_csv["results"]] == verdicts[:2]


async def test_an_event_holding_a_bidi_override_is_answered_invalid_character(
    stack: Stack, admin: Browser, public_events: PublicEvents
) -> None:
    """Before, the override became a space and the invitation went out under a name its
    sender didn't write; now the integration is told why, as for any other refusal."""
    portal = await new_portal(admin)
    key = f"crm-{uuid.uuid4()}"
    email = unique_email("event")
    envelope = invitation_requested(
        {
            "portal_slug": portal["slug"],
            "email": email,
            "idempotency_key": key,
            "invited_by": f"Acme Support{RLO}",
        }
    )
    await publish_envelope(stack, envelope)
    answer = await answer_to(stack, public_events, "invitation.rejected", key)
    assert answer["data"]["reason"] == "invalid_character"
    assert answer["data"]["message"] == f"The inviter's name (invited_by) {REORDERS} {RLO_NAMED}"
    assert answer["correlation_id"] == envelope["correlation_id"]


@pytest.mark.parametrize(
    "address", ["ada\u200b@example.com", f"ada@exa{RLO}mple.com", "\u2066ada@example.com"]
)
async def test_an_address_holding_invisible_or_bidi_characters_is_refused_everywhere_alike(
    stack: Stack, admin: Browser, public_events: PublicEvents, address: str
) -> None:
    portal = await new_portal(admin)
    status, answer = await api(
        admin, "POST", f"/api/v1/portals/{portal['id']}/invitations", {"email": address}
    )
    assert (status, answer["error"]["code"]) == (422, "invalid_email"), answer
    key = f"crm-{uuid.uuid4()}"
    envelope = invitation_requested(
        {"portal_slug": portal["slug"], "email": address, "idempotency_key": key}
    )
    await publish_envelope(stack, envelope)
    answer = await answer_to(stack, public_events, "invitation.rejected", key)
    assert answer["data"]["reason"] == "invalid_email"
    url = f"{stack.public_url}/admin/portals/{portal['id']}"
    _, _, page = await admin.get(url)
    code, _, page = await admin.submit(url, page, "Send Invitation", {"Email": address})
    assert code == 422 and "Enter an email address like name@example.com." in page


async def test_the_portal_editor_says_why_a_title_is_refused_in_the_readers_language(
    stack: Stack, admin: Browser
) -> None:
    portal = await new_portal(admin)
    url = f"{stack.public_url}/admin/portals/{portal['id']}"
    _, _, page = await admin.get(url)
    code, _, page = await admin.submit(url, page, "Save Portal", {"Title": f"Invoice {RLO}gnp.exe"})
    assert code == 422 and "hidden character that changes the order" in page, page[:2000]
    status, saved = await api(admin, "GET", f"/api/v1/portals/{portal['id']}")
    assert saved["title"] == portal["title"]
    # An invisible character typed or pasted is dropped, as a NUL is.
    _, _, page = await admin.get(url)
    code, _, page = await admin.submit(url, page, "Save Portal", {"Title": "Acme\u200b Ltd\u00ad"})
    assert code == 200, page[:2000]
    status, saved = await api(admin, "GET", f"/api/v1/portals/{portal['id']}")
    assert saved["title"] == "Acme Ltd"
