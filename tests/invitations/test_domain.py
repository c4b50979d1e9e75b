"""Pure rules: expiry, status machine, tokens, emails, the mail job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.common.errors import Conflict, Gone, InvalidInput
from services.invitations import domain

SENT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("days", [7, 14, 21, 30])
def test_expiry_is_sent_at_plus_setting(days: int) -> None:
    expires = domain.expiry_for(SENT, days)
    assert expires == SENT + timedelta(days=days)
    just_before = expires - timedelta(microseconds=1)
    assert domain.effective_status("pending", expires, just_before) == "pending"
    # Exactly at the boundary the link is dead (accept checks expires_at > now).
    assert domain.effective_status("pending", expires, expires) == "expired"
    assert domain.effective_status("pending", expires, expires + timedelta(seconds=1)) == "expired"


@pytest.mark.parametrize("days", [0, 1, 13, 15, 31, -7, 365])
def test_expiry_days_outside_choices_refused(days: int) -> None:
    with pytest.raises(InvalidInput) as err:
        domain.check_expiry_days(days)
    assert "7, 14, 21 or 30" in err.value.message


def test_setting_change_does_not_move_an_issued_expiry() -> None:
    expires = domain.expiry_for(SENT, 14)
    # The setting becomes 7 days later: the issued link still runs to its own end...
    assert domain.effective_status("pending", expires, SENT + timedelta(days=10)) == "pending"
    # ...and a resend after the change takes the new value from its own send time.
    resent_at = SENT + timedelta(days=10)
    assert domain.expiry_for(resent_at, 7) == resent_at + timedelta(days=7)


def test_default_is_fourteen_days() -> None:
    assert domain.DEFAULT_EXPIRY_DAYS == 14
    assert domain.EXPIRY_CHOICES == (7, 14, 21, 30)


@pytest.mark.parametrize("status", ["accepted", "revoked", "expired"])
def test_effective_status_leaves_closed_states_alone(status: str) -> None:
    assert domain.effective_status(status, SENT, SENT - timedelta(days=1)) == status


def test_token_usable_only_when_pending_and_in_time() -> None:
    expires = SENT + timedelta(days=14)
    domain.check_token_usable("pending", expires, SENT)
    with pytest.raises(Gone) as expired:
        domain.check_token_usable("pending", expires, expires)
    assert expired.value.code == "invitation_expired"
    with pytest.raises(Gone) as revoked:
        domain.check_token_usable("revoked", expires, SENT)
    assert revoked.value.code == "invitation_revoked"
    with pytest.raises(Conflict) as used:
        domain.check_token_usable("accepted", expires, SENT)
    assert used.value.code == "invitation_used"


def test_resend_allowed_from_pending_and_expired_only() -> None:
    domain.check_can_resend("pending")
    domain.check_can_resend("expired")
    for status, code in (("accepted", "invitation_accepted"), ("revoked", "invitation_revoked")):
        with pytest.raises(Conflict) as err:
            domain.check_can_resend(status)
        assert err.value.code == code


def test_revoke_rules() -> None:
    assert domain.must_revoke("pending") is True
    assert domain.must_revoke("expired") is True
    assert domain.must_revoke("revoked") is False
    with pytest.raises(Conflict) as err:
        domain.must_revoke("accepted")
    assert err.value.code == "invitation_accepted"


def test_an_acceptance_under_way_is_spent_but_finishable() -> None:
    expires = SENT + timedelta(days=14)
    # Spent: shown as accepted, not revocable or resendable, even past the link's end
    # (its holder keeps its lease: the link was spent in time).
    assert domain.effective_status("accepting", expires, expires + timedelta(days=1)) == "accepted"
    for check in (domain.must_revoke, domain.check_can_resend):
        with pytest.raises(Conflict) as err:
            check("accepting")
        assert err.value.code == "invitation_accepted"
    # Finishable within the link's life: the same link validates, and takes over once the
    # lease is over.
    domain.check_token_usable("accepting", expires, SENT + timedelta(days=1))
    lease_end = SENT + domain.ACCEPT_LEASE
    with pytest.raises(Conflict) as held:
        domain.check_reservable("accepting", expires, lease_end, SENT)
    assert held.value.code == "invitation_used"
    domain.check_reservable("accepting", expires, lease_end, lease_end)
    domain.check_reservable("pending", expires, None, SENT)
    with pytest.raises(Gone) as expired:
        domain.check_reservable("pending", expires, None, expires)
    assert expired.value.code == "invitation_expired"


def test_an_acceptance_under_way_is_not_finishable_after_the_links_expiry() -> None:
    """A link found in a mailbox months later can't take a stalled acceptance over."""
    expires = SENT + timedelta(days=14)
    later = expires + timedelta(days=90)
    lease_end = SENT + domain.ACCEPT_LEASE
    for check in (
        lambda: domain.check_token_usable("accepting", expires, later),
        lambda: domain.check_reservable("accepting", expires, lease_end, later),
        lambda: domain.check_reservable("accepting", expires, lease_end, expires),
    ):
        with pytest.raises(Gone) as err:
            check()
        assert err.value.code == "invitation_expired"
    # A group's link: the stalled acceptance isn't taken, and the link says it expired.
    row = domain.LinkRow(
        status="accepting", expires_at=expires, claim_until=lease_end, portal_active=True
    )
    assert domain.acceptable_in_group([row], expires - timedelta(seconds=1)) == [0]
    for rules in (domain.acceptable_in_group, domain.usable_in_group):
        with pytest.raises(Gone) as err:
            rules([row], later)
        assert err.value.code == "invitation_expired"


def test_a_stalled_acceptance_is_handed_back_or_expired() -> None:
    """The sweep's rule: once its lease is over an acceptance is no one's; in the link's
    life, after the time a retry takes, it is pending again (the same link or a Resend
    finishes it, staff can Revoke); past the link's end it is expired. One whose holder
    still has its lease stays, even past the link's end."""
    expires = SENT + timedelta(days=14)
    lease_end = SENT + domain.ACCEPT_LEASE
    becomes = domain.stalled_acceptance_becomes
    assert becomes("accepting", expires, lease_end, SENT) is None
    assert becomes("accepting", expires, lease_end, lease_end) is None  # a retry's time
    quiet = lease_end + domain.ACCEPT_RETRY_WINDOW
    assert becomes("accepting", expires, lease_end, quiet - timedelta(seconds=1)) is None
    assert becomes("accepting", expires, lease_end, quiet) == "pending"
    late = expires - timedelta(seconds=10)
    assert becomes("accepting", expires, late + domain.ACCEPT_LEASE, expires) is None
    assert becomes(
        "accepting", expires, late + domain.ACCEPT_LEASE, late + timedelta(minutes=1)
    ) == ("expired")
    assert domain.stalled_acceptance_becomes("accepting", expires, lease_end, expires) == (
        "expired"
    )
    for status in ("pending", "accepted", "revoked", "expired"):
        assert domain.stalled_acceptance_becomes(status, expires, lease_end, expires) is None


def test_token_is_random_and_stored_as_sha256() -> None:
    token, token_hash = domain.new_token()
    other, _ = domain.new_token()
    assert token != other and len(token) >= 43
    assert token_hash == domain.hash_token(token) and len(token_hash) == 64
    assert token not in token_hash


def test_mail_context() -> None:
    expires = SENT + timedelta(days=14)
    context = domain.mail_context(
        public_base="https://clients.example.com",
        token="tok",
        portal_title="Acme",
        expires_at=expires,
        invited_by=None,
    )
    assert context == {
        "accept_url": "https://clients.example.com/invitations/accept?token=tok",
        "portal_title": "Acme",
        "site_name": "clients.example.com",
        "expires_at": expires.isoformat(),
        "invited_by": "",
    }


def test_only_active_portals_take_invitations() -> None:
    domain.check_portal_accepts("active")
    for status in ("pending", "archived"):
        with pytest.raises(Conflict) as err:
            domain.check_portal_accepts(status)
        assert err.value.code == "portal_not_active"
