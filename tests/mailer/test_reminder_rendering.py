"""The reminder email (template invitation_reminder): what the recipient sees."""

from __future__ import annotations

import pytest

from services.mailer.domain import InvalidContext
from services.mailer.rendering import new_environment, render
from tests.mailer.test_rendering import INVITATION, URL, _message
from tests.support.smtp import accept_link, html_part, text_part


def test_reminder_subject_both_parts_and_the_fresh_link() -> None:
    msg = _message("invitation_reminder", INVITATION)
    assert msg["Subject"] == "Reminder: your invitation to Acme Rebrand expires on 9 December 2026"
    text, html = text_part(msg), html_part(msg)
    for part in (text, html.replace("<bdi>", "").replace("</bdi>", "")):
        assert "Acme Rebrand" in part and "Northwind Agency" in part
        assert "Jane Admin invited you" in part
        assert "expires on 9 December 2026 at 15:30 UTC" in part
        assert "the one in the earlier email no longer works" in part
    assert URL in text
    assert accept_link(msg) == URL
    assert ">Accept Invitation</a>" in html


def test_reminder_escapes_what_comes_from_outside() -> None:
    hostile = {**INVITATION, "portal_title": "<script>x</script>", "invited_by": "<b>Eve</b>"}
    html = html_part(_message("invitation_reminder", hostile))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>Eve</b>" not in html


def test_reminder_needs_its_link() -> None:
    context = {k: v for k, v in INVITATION.items() if k != "accept_url"}
    with pytest.raises(InvalidContext):
        render(new_environment(), "invitation_reminder", context)


def test_reminder_greets_by_name_and_repeats_the_personal_message_escaped() -> None:
    context = {
        **INVITATION,
        "invitee_name": "Ada",
        "personal_message": "See you <b>Monday</b>\nBring the brief.",
    }
    msg = _message("invitation_reminder", context)
    text, html = text_part(msg), html_part(msg)
    assert text.startswith("Hi Ada,") and "Hi <bdi>Ada</bdi>," in html
    assert "The message from Jane Admin:" in text
    assert "The message from <bdi>Jane Admin</bdi>:" in html
    assert "See you <b>Monday</b>\nBring the brief." in text
    assert "<b>Monday</b>" not in html and "See you &lt;b&gt;Monday&lt;/b&gt;" in html
    # Without them, the reminder reads as before.
    plain = text_part(_message("invitation_reminder", INVITATION))
    assert "Hi " not in plain and "message" not in plain.lower()
