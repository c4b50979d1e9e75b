"""Issue 17 on the real stack: an invitation made through /api/v1 with a language gets
its email in that language (subject, body, Content-Language)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from email.header import decode_header, make_header

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.flows import Api, unique_email
from tests.support.smtp import html_part, text_part

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[Api]:
    client = Api(stack)
    yield client
    await client.close()


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
