"""The Activity screen's Details column: what changed, in the screen's words; the API's
actions are the log's."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from libs.common.activity import ACTIONS
from services.gateway import i18n
from services.gateway.contracts import ActivityAction
from services.gateway.views.activity import describe


@pytest.mark.parametrize(
    ("action", "details", "words"),
    [
        ("user.role_changed", {"role": "staff", "previous_role": "client"}, "Staff (was Client)"),
        ("portal.updated", {"status": "archived"}, "Status: Archived"),
        ("portal.access_granted", {"role": "sub_client"}, "Sub-Client"),
        ("portal.access_granted", {"role": "client"}, "Client"),
        (
            "settings.changed",
            {
                "changes": {"invitation_expiry_days": 21, "invitation_reminder_days": 0},
                "previous": {"invitation_expiry_days": 14, "invitation_reminder_days": 3},
            },
            "Invitation Link Expiry: 21 days (was 14 days); Invitation Reminder: Off (was 3 days)",
        ),
        (
            "settings.changed",
            {"changes": {"login_redirect": True}, "previous": {"login_redirect": False}},
            "Login Redirect: On (was Off)",
        ),
        ("key.created", {"scopes": ["portals:read", "users:read"]}, "portals:read, users:read"),
        ("invitation.sent", {"invited_by": "Dana Lee"}, ""),
        ("user.disabled", {}, ""),
    ],
)
def test_details_in_words(action: str, details: dict[str, Any], words: str) -> None:
    assert describe({"action": action, "details": details}) == words


def test_the_api_names_every_action_the_log_records() -> None:
    assert set(get_args(ActivityAction)) == set(ACTIONS)


@pytest.mark.parametrize(
    ("action", "details", "words"),
    [
        (
            "user.role_changed",
            {"role": "staff", "previous_role": "client"},
            "Mitarbeiter (vorher Kunde)",
        ),
        ("portal.updated", {"status": "archived"}, "Status: Archiviert"),
        ("portal.access_granted", {"role": "sub_client"}, "Unterkunde"),
        (
            "settings.changed",
            {
                "changes": {"invitation_expiry_days": 21, "invitation_reminder_days": 0},
                "previous": {"invitation_expiry_days": 1, "invitation_reminder_days": 3},
            },
            "Ablauf des Einladungslinks: 21 Tage (vorher 1 Tag);"
            " Erinnerung an die Einladung: Aus (vorher 3 Tage)",
        ),
        (
            "settings.changed",
            {"changes": {"login_redirect": True}, "previous": {"login_redirect": False}},
            "Weiterleitung nach der Anmeldung: An (vorher Aus)",
        ),
    ],
)
def test_details_in_german(action: str, details: dict[str, Any], words: str) -> None:
    """The Activity screen was German around English details and actions."""
    i18n.use("de")
    try:
        assert describe({"action": action, "details": details}) == words
        assert i18n.gettext(ACTIONS["invitation.sent"]) == "Einladung gesendet"
    finally:
        i18n.use("en")
