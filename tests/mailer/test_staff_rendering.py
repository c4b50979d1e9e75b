"""The staff invitation email (Users → Invite Staff): who invited, to what, as what."""

from __future__ import annotations

import pytest

from services.mailer.domain import InvalidContext
from services.mailer.rendering import new_environment, render

URL = "http://localhost:8080/invitations/accept?token=abc_DEF-123"
STAFF = {
    "accept_url": URL,
    "site_name": "clients.example.com",
    "expires_at": "2026-12-09T15:30:00+00:00",
    "invited_by": "dana@agency.example",
    "role_name": "Staff",
    "expires_in_days": "14",
}


def test_the_staff_invitation_says_who_invited_to_what_and_as_what() -> None:
    rendered = render(new_environment(), "staff_invitation", STAFF)
    said = "dana@agency.example has invited you to join clients.example.com as Staff"
    assert rendered.subject == said
    assert said in rendered.text
    assert URL in rendered.text and "Accept Invitation" in rendered.html
    assert "9 December 2026" in rendered.text and "(14 days after it was sent)" in rendered.text
    assert "portal" not in rendered.text.lower().replace("admin area", "")


def test_without_an_inviter_or_a_role_name() -> None:
    anonymous = render(new_environment(), "staff_invitation", {**STAFF, "invited_by": ""})
    assert anonymous.subject == "You're invited to join clients.example.com as Staff"
    with pytest.raises(InvalidContext, match="role_name"):
        render(new_environment(), "staff_invitation", {**STAFF, "role_name": ""})


def test_names_are_escaped_in_html() -> None:
    hostile = {**STAFF, "invited_by": "<script>x</script>"}
    html = render(new_environment(), "staff_invitation", hostile).html
    assert "<script>" not in html and "&lt;script&gt;" in html
