"""Issue 17 on the real stack: an invitation made through /api/v1 with a language gets
its email in that language (subject, body, Content-Language)."""

from __future__ import annotations

import uuid
from email.header import decode_header, make_header

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.flows import Api, unique_email
from tests.support.smtp import html_part, text_part

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def test_a_french_invitation_through_the_api(stack: Stack, api: Api) -> None:
    title = f"Langues {uuid.uuid4().hex[:6]}"
    portal = await api.portal(title)
    email = unique_email("french")
    path = f"/portals/{portal['id']}/invitations"
    code, body = await api.call("POST", path, {"email": email, "locale": "fr"})
    assert code == 201, body
    [message] = await stack.sink.wait_for(email)
    assert message["Content-Language"] == "fr"
    subject = str(make_header(decode_header(str(message["Subject"])))).strip()
    assert subject.startswith(f"Vous êtes invité à {title} sur ")
    assert "Accepter l'invitation" in text_part(message)
    assert "Accepter l&#39;invitation" in html_part(message)  # escaped in HTML


async def test_a_german_staff_invitation_names_the_role_in_german(stack: Stack, api: Api) -> None:
    email = unique_email("kollegin")
    code, body = await api.call(
        "POST", "/staff-invitations", {"email": email, "role": "staff", "locale": "de"}
    )
    assert code == 201, body
    [message] = await stack.sink.wait_for(email)
    assert message["Content-Language"] == "de"
    subject = str(make_header(decode_header(str(message["Subject"])))).strip()
    assert "als Mitarbeiter" in subject, subject
    assert "als Mitarbeiter" in text_part(message)
    # A language we don't ship is refused with the message the Invite Client box gives.
    code, body = await api.call(
        "POST", "/staff-invitations", {"email": unique_email("x"), "role": "staff", "locale": "it"}
    )
    assert code == 422, body
    assert "Language (locale) must be one of en, de, fr, es." in str(body)
