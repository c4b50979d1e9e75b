"""Pure gateway rules: safe redirects, CSRF comparison, password form checks, email
normalisation, rate-limit windows and the fixed flash messages. No I/O."""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from email_validator import EmailNotValidError, validate_email

MIN_PASSWORD = 12
MAX_PASSWORD = 1024
EXPIRY_CHOICES = (7, 14, 21, 30)
STATUSES = ("active", "pending", "archived")
INVITATION_STATUSES = ("pending", "accepted", "expired", "revoked")
# One answer for an unknown email and a wrong password: no account enumeration.
BAD_LOGIN = "The email or password is incorrect."


def safe_next_path(value: str | None) -> str | None:
    """A local path we may redirect to after login, or None.

    Only a path starting with exactly one '/', with no scheme, no backslash (browsers
    read '/\\evil' as '//evil') and no control characters, so it can't leave the site."""
    if not value or len(value) > 2000:
        return None
    if not value.startswith("/") or value.startswith("//"):
        return None
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    if ":" in value.split("?", 1)[0].split("/", 2)[1]:
        return None
    return value


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(cookie: str | None, submitted: str | None) -> bool:
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


def origin_allowed(origin: str | None, public_origin: str) -> bool:
    """An Origin header, when the browser sends one, must be our own public origin."""
    if origin is None:
        return True
    return hmac.compare_digest(origin.rstrip("/").lower(), public_origin.lower())


def api_key_matches(header: str | None, key: str | None) -> bool:
    if not key or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), key.encode())


def normalise_email(value: str) -> str | None:
    """The address stripped, domain lower-cased; None when it isn't one plain address."""
    value = value.strip()
    if not value or any(c in value for c in "\r\n,;<>"):
        return None
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return None
    return f"{checked.local_part}@{checked.domain.lower()}"


def password_problem(password: str, confirm: str, email: str) -> str | None:
    """The first problem with a new password, in words for the person, or None."""
    if len(password) < MIN_PASSWORD:
        return f"The password must be at least {MIN_PASSWORD} characters long."
    if len(password) > MAX_PASSWORD:
        return f"The password must be at most {MAX_PASSWORD} characters long."
    if password.strip().lower() == email.strip().lower():
        return "The password must not be your email address."
    if not hmac.compare_digest(password.encode(), confirm.encode()):
        return "The passwords do not match."
    return None


@dataclass
class SlidingWindow:
    """Counts hits per key over the last ``window`` seconds (in-process)."""

    limit: int
    window: float
    clock: Callable[[], float] = time.monotonic
    _hits: dict[str, deque[float]] = field(default_factory=dict)

    def blocked(self, key: str) -> int:
        """Seconds to wait before the next hit is allowed (0: allowed), recording nothing."""
        now = self.clock()
        hits = self._hits.get(key)
        if hits is None:
            return 0
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return max(1, int(hits[0] + self.window - now) + 1) if len(hits) >= self.limit else 0

    def hit(self, key: str) -> int:
        """Record one hit; return 0 when allowed, else the seconds to wait."""
        wait = self.blocked(key)
        if wait:
            return wait
        now = self.clock()
        self._hits.setdefault(key, deque()).append(now)
        if len(self._hits) > 10_000:
            self._forget_idle(now)
        return 0

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[key]


FLASH_MESSAGES: dict[str, str] = {
    "portal_saved": "Portal saved.",
    "portal_created": "Portal created.",
    "invitation_sent": "Invitation sent to {email}",
    "invitation_resent_pending": (
        "An invitation was already pending for {email}; it has been resent."
    ),
    "invitation_resent": "Invitation resent to {email}",
    "invitation_revoked": "Invitation to {email} revoked.",
    "settings_saved": "Settings saved.",
    "user_disabled": "User {email} disabled.",
    "password_set": "Your password has been set. You can log in now.",
    "logged_out": "You have been logged out.",
}


def flash_text(key: str, email: str = "") -> str | None:
    template = FLASH_MESSAGES.get(key)
    return template.format(email=email) if template is not None else None


def parse_uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
