"""The password policy, once, for identity (which enforces it on every password it
stores) and the gateway (which checks a form before calling identity, so a page can say
what's wrong in the reader's language without a round trip)."""

from __future__ import annotations

import unicodedata
from functools import cache
from pathlib import Path

from .email import email_key
from .i18n import N_

MIN_PASSWORD_LENGTH = 12
# argon2id hashes whatever it is given; a bound keeps one request from costing seconds.
MAX_PASSWORD_LENGTH = 1024
# How much of a password field a form reads, whether it sets the password or checks it (one
# bound for all, so the password that was set is the one that logs in). NFKC composes at
# most four code points into one (U+1F82 from four), so every password the policy takes
# fits, and a field cut here is still too long for the policy: never silently shortened.
PASSWORD_FIELD = 4 * MAX_PASSWORD_LENGTH + 1
COMMON_PASSWORDS_FILE = Path(__file__).parent / "common_passwords.txt"


# The refusals, as a person reads them (and as the gateway's catalogues translate them).
TOO_SHORT = N_("The password must be at least 12 characters long.")  # MIN_PASSWORD_LENGTH
TOO_LONG = N_("The password must be at most 1024 characters long.")  # MAX_PASSWORD_LENGTH
IS_THE_EMAIL = N_("The password must not be your email address.")
TOO_COMMON = N_("This password is too common and easy to guess. Choose a less predictable one.")


def normalise_password(password: str) -> str:
    """The password as it is checked and hashed: Unicode NFKC (NIST SP 800-63B), so one
    password typed on another device (an accented letter as one character or as a letter
    and an accent, full-width digits from an East Asian input method) is the same one."""
    return unicodedata.normalize("NFKC", password)


@cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip())


def password_problem(password: str, email: str | None) -> str | None:
    """Why a password is refused, in words a person understands; None when acceptable.

    The message never repeats the password itself."""
    password = normalise_password(password)
    if len(password) < MIN_PASSWORD_LENGTH:
        return TOO_SHORT
    if len(password) > MAX_PASSWORD_LENGTH:
        return TOO_LONG
    lowered = password.lower()
    if email is not None:
        address = email_key(email.strip())
        if lowered in {address, address.partition("@")[0]}:
            return IS_THE_EMAIL
    if lowered in common_passwords():
        return TOO_COMMON
    return None
