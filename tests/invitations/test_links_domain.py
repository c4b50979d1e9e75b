"""Pure rules of issue 20's links half: what a link that no longer works says, the caps
on new links (a sliding hour), reminders, and the portal rule for resends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.common.errors import Conflict, Gone, InvalidInput, RateLimited
from services.invitations import domain

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


# --- what a link says ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        ("pending", Gone, "invitation_replaced"),
        ("expired", Gone, "invitation_replaced"),
        ("revoked", Gone, "invitation_revoked"),
        ("accepting", Conflict, "invitation_used"),
        ("accepted", Conflict, "invitation_used"),
    ],
)
def test_an_earlier_link_says_what_became_of_its_invitation(
    status: str, error: type[Exception], code: str
) -> None:
    with pytest.raises(error) as raised:
        domain.check_earlier_link(status)
    assert raised.value.code == code  # type: ignore[attr-defined]


def test_a_replaced_link_says_so_and_never_suggests_a_copying_mistake() -> None:
    with pytest.raises(Gone) as raised:
        domain.check_earlier_link("pending")
    assert raised.value.status == 410
    assert "replaced by a newer one" in raised.value.message
    assert "copied" not in raised.value.message


def test_an_expired_link_says_when() -> None:
    expires = NOW - timedelta(days=2)
    with pytest.raises(Gone) as raised:
        domain.check_token_usable("pending", expires, NOW)
    assert raised.value.code == "invitation_expired"
    assert raised.value.details == {"expired_at": expires.isoformat()}
    assert "2026-02-27 12:00 UTC" in raised.value.message


def test_token_hash_or_none() -> None:
    assert domain.token_hash_or_none("") is None
    assert domain.token_hash_or_none("x" * (domain.MAX_TOKEN_LENGTH + 1)) is None
    assert domain.token_hash_or_none("abc") == domain.hash_token("abc")


# --- the caps: a sliding window --------------------------------------------------------
def test_under_the_limit_a_send_goes_at_once() -> None:
    sent = [NOW - timedelta(minutes=m) for m in (1, 2, 3, 4)]
    assert domain.next_send_at(sent, 5, HOUR, NOW) is None
    assert domain.next_send_at([], 1, HOUR, NOW) is None


def test_at_the_limit_the_next_goes_when_the_oldest_leaves_the_hour() -> None:
    sent = [NOW - timedelta(minutes=m) for m in (50, 40, 30, 20, 10)]
    assert domain.next_send_at(sent, 5, HOUR, NOW) == NOW + timedelta(minutes=10)
    # Exactly then, the oldest no longer counts: it may go.
    assert domain.next_send_at(sent, 5, HOUR, NOW + timedelta(minutes=10)) is None


def test_sends_older_than_the_window_do_not_count_and_order_does_not_matter() -> None:
    old = [NOW - timedelta(hours=2)] * 10
    recent = [NOW - timedelta(minutes=m) for m in (5, 55, 25)]
    assert domain.next_send_at(old + recent, 3, HOUR, NOW) == NOW + timedelta(minutes=5)
    assert domain.next_send_at(old + recent, 4, HOUR, NOW) is None


def test_over_the_limit_enough_sends_must_leave() -> None:
    # Six in the hour (first invitations are not refused, so a count can pass the limit):
    # with a limit of 5 the next may go when two have left.
    sent = [NOW - timedelta(minutes=m) for m in (59, 58, 30, 20, 10, 1)]
    assert domain.next_send_at(sent, 5, HOUR, NOW) == NOW + timedelta(minutes=2)


def test_the_refusal_says_when_rounded_up_to_the_minute() -> None:
    until = NOW + timedelta(minutes=12, seconds=30)
    refused = domain.send_limited(until, NOW, limit=5)
    assert isinstance(refused, RateLimited)
    assert refused.status == 429 and refused.code == "send_rate_limited"
    assert refused.retry_after == 12 * 60 + 30
    assert "2026-03-01 12:13 UTC" in refused.message
    assert "emailed 5 times in the last hour" in refused.message
    assert refused.details == {"retry_at": until.isoformat(), "retry_after": 12 * 60 + 30}
    by_address = domain.send_limited(until, NOW, limit=20, email="jo@example.com")
    assert by_address.message.startswith("jo@example.com has been sent 20 new invitation links")
    exact = domain.send_limited(NOW + timedelta(minutes=3), NOW, limit=5)
    assert "12:03 UTC" in exact.message and exact.retry_after == 180
    assert domain.send_limited(NOW, NOW, limit=5).retry_after == 1


# --- reminders ---------------------------------------------------------------------------
@pytest.mark.parametrize("days", [0, 1, 3])
def test_reminder_choices(days: int) -> None:
    assert domain.check_reminder_days(days) == days


@pytest.mark.parametrize("days", [-1, 2, 4, 7, 14])
def test_other_reminder_days_refused(days: int) -> None:
    with pytest.raises(InvalidInput) as raised:
        domain.check_reminder_days(days)
    assert raised.value.code == "invalid_reminder_days"


def test_reminder_window() -> None:
    expires = NOW + timedelta(days=5)
    due = lambda now, days=3, status="pending", reminded=None: domain.reminder_due(  # noqa: E731
        status, expires, reminded, days, now
    )
    assert not due(expires - timedelta(days=3, seconds=1))
    assert due(expires - timedelta(days=3))
    assert due(expires - timedelta(seconds=1))
    assert not due(expires)  # expired: too late
    assert not due(expires - timedelta(days=1), days=0)  # Off
    assert due(expires - timedelta(hours=23, minutes=59), days=1)
    assert not due(expires - timedelta(days=1, seconds=1), days=1)
    assert not due(expires - timedelta(days=1), reminded=NOW)  # one reminder only
    for status in ("accepting", "accepted", "revoked", "expired"):
        assert not due(expires - timedelta(days=1), status=status)


# --- resending to a portal that isn't Active ---------------------------------------------
@pytest.mark.parametrize("status", ["pending", "archived"])
def test_resend_to_a_portal_that_is_not_active_is_refused_clearly(status: str) -> None:
    with pytest.raises(Conflict) as raised:
        domain.check_portal_active_for_resend(status, "Acme Rebrand")
    assert raised.value.code == "portal_not_active"
    assert f"'Acme Rebrand' is {status.capitalize()}" in raised.value.message
    assert "Make the portal Active first." in raised.value.message
    domain.check_portal_active_for_resend("active", "Acme Rebrand")
