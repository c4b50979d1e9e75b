"""The email address rule, once for every service.

An address is one plain mailbox: no display name, no list, no line break or space; the
domain is lower-cased and the local part kept as typed (it is the owner's spelling).
Comparisons go through :func:`email_key`, which lower-cases character by character as
PostgreSQL's ``lower()`` does, so the unique indexes (``lower(email)``, ``email_lower``)
and the code agree. The one character whose lower case is two characters (U+0130,
"İ") is refused: Python and PostgreSQL would key it differently.

A plain ASCII address (nearly every row of a 10,000-row invitation batch, which checks
each address twice) skips email-validator: one regex accepts only what the validator
accepts and returns what it returns (tests/common/test_email.py compares the two on edge
cases and random strings); anything else, every refusal included, goes to the validator.
"""

from __future__ import annotations

import re

import email_validator
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from .errors import InvalidInput

MAX_EMAIL_LENGTH = 320
# Separators and brackets of lists and display names, and every kind of line break or
# space (``\s`` is ``str.isspace``): one C-speed search instead of a loop per character,
# which cost as much as the validator itself in a 10,000-row batch.
_FORBIDDEN = re.compile(r'[\r\n\x00,;<>"\s]')
# The validator's own limit (254 octets) on the whole address.
_PLAIN_MAX_LENGTH = 254
# The validator's rules for an ASCII address, narrowed where narrowing is cheaper than
# being exact (the caller falls back to the validator): a dot-atom local part of at most
# 64 characters (the validator's strict mode limit), and a domain of at least two
# hostname labels (letters, digits, inner hyphens, at most 63 characters each) whose last
# ends with a letter. So it holds under any of email-validator's settings: the others
# (TEST_ENVIRONMENT, GLOBALLY_DELIVERABLE, ALLOW_*) only let the validator accept more.
_PLAIN = re.compile(
    r"(?=[^@]{1,64}@)"
    r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?:[A-Za-z0-9][A-Za-z0-9-]{0,61})?[A-Za-z])"
)


class InvalidEmail(InvalidInput):
    """Not one plain email address; ``reason`` says why, for logs and the mailer."""

    code = "invalid_email"

    def __init__(self, reason: str) -> None:
        super().__init__("Enter a single valid email address, like name@example.com.")
        self.reason = reason


def normalise_email(raw: str) -> str:
    """The address, trimmed, domain lower-cased; :class:`InvalidEmail` when it isn't one."""
    value = raw.strip()
    if not value:
        raise InvalidEmail("the address is empty")
    if len(value) > MAX_EMAIL_LENGTH:
        raise InvalidEmail(f"the address is longer than {MAX_EMAIL_LENGTH} characters")
    if _FORBIDDEN.search(value):
        raise InvalidEmail("the address must be one plain email address")
    if not value.isascii() and any(len(c.lower()) != 1 for c in value):
        raise InvalidEmail("the address contains a character without a single lower case")
    return _plain(value) or _full(value)


def _plain(value: str) -> str | None:
    """What :func:`_full` returns for a plain ASCII address; None when unsure."""
    if len(value) > _PLAIN_MAX_LENGTH:
        return None
    match = _PLAIN.fullmatch(value)
    if match is None:
        return None
    local, domain = match.groups()
    domain = domain.lower()
    # "--" covers the validator's refusal of "ab--" labels and its IDNA checks of "xn--";
    # the mailbox names it lower-cases, and its special-use domains (read now: a program
    # may change the list), are left to it too.
    if "--" in domain or local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES:
        return None
    for special in email_validator.SPECIAL_USE_DOMAIN_NAMES:
        if domain == special or domain.endswith("." + special):
            return None
    return f"{local}@{domain}"


def _full(value: str) -> str:
    try:
        result = validate_email(value, check_deliverability=False, allow_display_name=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(str(exc)) from None
    local, _, domain = result.normalized.rpartition("@")
    return f"{local}@{domain.lower()}"


def email_or_none(raw: str) -> str | None:
    """:func:`normalise_email`, or None when ``raw`` isn't one address (a search box, a
    form that collects every problem before it answers)."""
    try:
        return normalise_email(raw)
    except InvalidEmail:
        return None


def ascii_address(address: str) -> str | None:
    """The address for a mail server without SMTPUTF8 (RFC 6531): an internationalised
    domain in its ASCII form (IDNA, ``xn--``), which every server takes; None when the
    local part isn't ASCII, which only SMTPUTF8 can carry."""
    if address.isascii():
        return address
    try:
        return validate_email(address, check_deliverability=False).ascii_email
    except EmailNotValidError:
        return None


def email_key(address: str) -> str:
    """The comparison key of an address, equal to PostgreSQL's ``lower(address)``:
    each character lowered on its own (Python's ``str.lower`` looks at neighbours for a
    final sigma; PostgreSQL doesn't)."""
    return "".join(c.lower() for c in address)


def typed_email_key(raw: str) -> str:
    """The :func:`email_key` of the inbox an address typed into a form is, as identity
    reads it (:func:`normalise_email`: a full-width letter or an ideographic full stop
    in the domain is the ASCII one, a local part is NFC): every spelling that logs in to
    one account gets one key, so a count per account can't be split by respelling it.
    What isn't an address is keyed as typed (trimmed)."""
    value = raw.strip()
    return email_key(email_or_none(value) or value)


def same_email(a: str, b: str) -> bool:
    return email_key(a.strip()) == email_key(b.strip())
