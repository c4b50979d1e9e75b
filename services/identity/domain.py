"""Identity rules without I/O: email normalisation, the password policy, tokens, sessions."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Literal

from email_validator import EmailNotValidError, validate_email

from libs.common.errors import InvalidInput

Role = Literal["administrator", "client"]

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_LENGTH = 320
RESET_LIFETIME = timedelta(hours=1)
# Writing last_seen_at on every request would turn each page view into a write; a
# minute of slack on a two-hour idle limit is harmless.
TOUCH_INTERVAL = timedelta(seconds=60)

COMMON_PASSWORDS_FILE = Path(__file__).parent / "common_passwords.txt"


def normalise_email(raw: str) -> str:
    """One plain address, stripped, domain lower-cased (comparisons are case-insensitive
    anyway). Refuses line breaks, lists and display names."""
    value = raw.strip()
    if not value or len(value) > MAX_EMAIL_LENGTH:
        raise InvalidInput("Enter a valid email address.", code="invalid_email")
    if any(c in value for c in '\r\n,;<>"') or any(c.isspace() for c in value):
        raise InvalidInput(
            "Enter a single email address, without a name or spaces.", code="invalid_email"
        )
    try:
        result = validate_email(value, check_deliverability=False, allow_display_name=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"Enter a valid email address ({exc}).", code="invalid_email") from None
    local, _, domain = result.normalized.rpartition("@")
    return f"{local}@{domain.lower()}"


@cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip())


def password_problem(password: str, email: str | None) -> str | None:
    """Why a password is refused, in words a person understands; None when acceptable.

    The message never repeats the password itself."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"The password must be at least {MIN_PASSWORD_LENGTH} characters long."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"The password must be at most {MAX_PASSWORD_LENGTH} characters long."
    lowered = password.lower()
    if email is not None:
        address = email.strip().lower()
        if lowered in {address, address.partition("@")[0]}:
            return "The password must not be your email address."
    if lowered in common_passwords():
        return "This password is too common and easy to guess. Choose a less predictable one."
    return None


def check_password(password: str, email: str | None) -> None:
    problem = password_problem(password, email)
    if problem is not None:
        raise InvalidInput(problem, code="weak_password")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    role: Role
    disabled: bool
    created_at: datetime
    created_by_invitation: uuid.UUID | None = None


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta
    absolute: timedelta

    def expires_at(self, created_at: datetime) -> datetime:
        return created_at + self.absolute

    def is_live(self, *, last_seen_at: datetime, expires_at: datetime, now: datetime) -> bool:
        return now < expires_at and now < last_seen_at + self.idle

    def idle_expires_at(self, *, last_seen_at: datetime, expires_at: datetime) -> datetime:
        return min(expires_at, last_seen_at + self.idle)

    @staticmethod
    def needs_touch(last_seen_at: datetime, now: datetime) -> bool:
        return now - last_seen_at >= TOUCH_INTERVAL


def encode_cursor(created_at: datetime, user_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{user_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(ident)
    except ValueError:
        raise InvalidInput("The cursor is not valid.", code="invalid_cursor") from None
