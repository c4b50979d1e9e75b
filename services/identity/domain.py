"""Identity rules without I/O: email normalisation, the password policy, tokens, sessions."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from libs.common.errors import InvalidInput
from libs.common.events import ROLE_RANK
from libs.common.passwords import password_problem
from libs.common.text import clean_line

Role = Literal["administrator", "staff", "client"]
ROLES: tuple[Role, ...] = ("administrator", "staff", "client")


def raises(previous: str, role: Role) -> bool:
    """``role`` gives more than ``previous``."""
    return ROLE_RANK[role] > ROLE_RANK.get(previous, 0)


# What an integration key may do in the public JSON API (the gateway maps each /api/v1
# route to one of them; a route without one needs an administrator or the bootstrap key).
# What the Activity log says instead of an erased person's email (handlers.erase_user).
ERASED_LABEL = "Erased user"
SCOPES = ("invitations:write", "invitations:read", "portals:read", "portals:write", "users:read")
API_KEY_PREFIX = "cpk_"
# last_used_at is written at most this often per key: not a write per API call.
KEY_TOUCH_INTERVAL = timedelta(seconds=60)

RESET_LIFETIME = timedelta(hours=1)
# Writing last_seen_at on every request would turn each page view into a write; a
# minute of slack on a two-hour idle limit is harmless.
TOUCH_INTERVAL = timedelta(seconds=60)


def check_password(password: str, email: str | None) -> None:
    problem = password_problem(password, email)
    if problem is not None:
        raise InvalidInput(problem, code="weak_password")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # surrogateescape: a header byte that isn't UTF-8 reaches us as a lone surrogate; such
    # a token hashes to what no token we made does (an unknown one), never an error.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    role: Role
    disabled: bool
    created_at: datetime
    created_by_invitation: uuid.UUID | None = None
    locale: str | None = None
    time_zone: str | None = None


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


# --- integration keys -------------------------------------------------------------------
def new_api_key() -> tuple[str, str, str]:
    """A key (shown once), its sha256 (the only thing stored) and its display prefix."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key), key[: len(API_KEY_PREFIX) + 6]


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_key_name(raw: str) -> str:
    """One line: an invitation sent with the key names it as the inviter."""
    name = clean_line(raw, "The key's name", "name")
    if not 1 <= len(name) <= 100:
        raise InvalidInput("Give the key a name of 1 to 100 characters.", code="invalid_key_name")
    return name


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise InvalidInput(
            f"Unknown scope {', '.join(unknown)}; the scopes are {', '.join(SCOPES)}.",
            code="invalid_scopes",
        )
    if not scopes:
        raise InvalidInput("Choose at least one scope for the key.", code="invalid_scopes")
    return [scope for scope in SCOPES if scope in scopes]


# --- the Activity log -------------------------------------------------------------------
@dataclass(frozen=True)
class ActivityEntry:
    """One change made by a staff member or a key: who, when, what, on which object.
    ``object_label`` is what a person reads (an email, a title, a key's name); a user's is
    filled in from the users table when the event names only the id."""

    id: uuid.UUID
    occurred_at: datetime
    action: str
    actor_type: str
    actor_id: str
    actor_name: str
    object_type: str
    object_id: str | None
    object_label: str = ""
    portal_id: uuid.UUID | None = None
    details: dict[str, Any] = field(default_factory=dict)
