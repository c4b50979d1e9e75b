"""Invitation rules: expiry, the status machine, tokens, email addresses. No I/O."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from libs.common.errors import Conflict, Gone, InvalidInput

Clock = Callable[[], datetime]
Status = Literal["pending", "accepted", "revoked", "expired"]

EXPIRY_CHOICES = (7, 14, 21, 30)
DEFAULT_EXPIRY_DAYS = 14
MAX_TOKEN_LENGTH = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- expiry ---------------------------------------------------------------------------
def check_expiry_days(days: int) -> int:
    if days not in EXPIRY_CHOICES:
        raise InvalidInput(
            "Invitation Link Expiry must be 7, 14, 21 or 30 days.", code="invalid_expiry_days"
        )
    return days


def expiry_for(sent_at: datetime, days: int) -> datetime:
    """The link's end, fixed when it is sent: a later settings change doesn't move it."""
    return sent_at + timedelta(days=check_expiry_days(days))


def effective_status(status: str, expires_at: datetime, now: datetime) -> Status:
    """A pending invitation past its expiry is expired, even before the sweep marks it."""
    if status == "pending" and now >= expires_at:
        return "expired"
    if status not in ("pending", "accepted", "revoked", "expired"):
        raise ValueError(f"unknown invitation status {status!r}")
    return status  # type: ignore[return-value]


# --- transitions ----------------------------------------------------------------------
def check_token_usable(status: str, expires_at: datetime, now: datetime) -> None:
    """Why a link can't be used (validate / accept); returns when it is still good."""
    current = effective_status(status, expires_at, now)
    if current == "accepted":
        raise Conflict(
            "This invitation has already been used. Please log in instead.",
            code="invitation_used",
        )
    if current == "revoked":
        raise Gone("This invitation has been revoked.", code="invitation_revoked")
    if current == "expired":
        raise Gone(
            "This invitation link has expired. Ask for a new invitation.",
            code="invitation_expired",
        )


def check_can_resend(status: str) -> None:
    """Resend works on pending and expired invitations; nothing leaves accepted/revoked."""
    if status == "accepted":
        raise Conflict("This invitation has already been accepted.", code="invitation_accepted")
    if status == "revoked":
        raise Conflict(
            "This invitation has been revoked; send a new invitation instead.",
            code="invitation_revoked",
        )


def must_revoke(status: str) -> bool:
    """True when revoking changes something; False when it is already revoked."""
    if status == "accepted":
        raise Conflict(
            "This invitation has already been accepted and can't be revoked.",
            code="invitation_accepted",
        )
    return status != "revoked"


# --- tokens ---------------------------------------------------------------------------
def new_token() -> tuple[str, str]:
    """A one-time link token and the sha256 hex that is the only thing we store."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- email ----------------------------------------------------------------------------
def normalise_email(raw: str) -> str:
    """One plain address: trimmed, domain lower-cased. No display names, lists or CR/LF."""
    value = raw.strip()
    invalid = InvalidInput(
        "Enter a single valid email address, like name@example.com.", code="invalid_email"
    )
    if not value or len(value) > 320 or any(c in value for c in "\r\n,;<>\t "):
        raise invalid
    try:
        result = validate_email(value, check_deliverability=False, allow_display_name=False)
    except EmailNotValidError:
        raise invalid from None
    return str(result.normalized)


def email_key(email: str) -> str:
    return email.lower()


# --- the mail job ---------------------------------------------------------------------
def accept_url(public_base: str, token: str) -> str:
    return f"{public_base}/invitations/accept?token={token}"


def site_name(public_base: str) -> str:
    return urlsplit(public_base).hostname or public_base


def mail_context(
    *,
    public_base: str,
    token: str,
    portal_title: str,
    expires_at: datetime,
    invited_by: str | None,
) -> dict[str, str]:
    return {
        "accept_url": accept_url(public_base, token),
        "portal_title": portal_title,
        "site_name": site_name(public_base),
        "expires_at": expires_at.isoformat(),
        "invited_by": invited_by or "",
    }


def check_portal_accepts(status: str) -> None:
    if status != "active":
        raise Conflict(
            f"This portal is {status}; only Active portals take invitations.",
            code="portal_not_active",
        )
