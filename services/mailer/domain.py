"""Delivery rules: address checks, retry schedule, how an SMTP answer is judged, and the
reasons a delivery fails for good. Pure: no I/O."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from email_validator import EmailNotValidError, validate_email

MAX_RETRY_DELAY_SECONDS = 600.0
# A row left in 'sending' longer than this belongs to a worker that died mid-send; it is
# queued again, so a crash can mean a second copy of one email (at-least-once).
STUCK_SENDING_SECONDS = 120
MAX_ERROR_LENGTH = 500


class FailureReason(StrEnum):
    """Machine-readable ``mail.failed`` reasons."""

    INVALID_ADDRESS = "invalid_address"
    INVALID_CONTEXT = "invalid_context"
    REJECTED = "smtp_rejected"
    MAX_ATTEMPTS = "max_attempts"


class InvalidAddress(ValueError):
    """The recipient can't be used in a To header."""


@dataclass(frozen=True)
class RequestMail:
    """Command: record a mail job and send it."""

    mail_id: uuid.UUID
    template: str
    to: str
    ref_type: str
    ref_id: uuid.UUID
    context: Mapping[str, str]
    correlation_id: str | None = None


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery, ready to render and send."""

    mail_id: uuid.UUID
    template: str
    to_address: str
    ref_type: str
    ref_id: uuid.UUID
    context: Mapping[str, str]
    attempts: int
    correlation_id: str | None


def normalise_address(raw: str) -> str:
    """One plain address (no display name, no list, no CR/LF), domain lower-cased."""
    if any(c in raw for c in "\r\n\x00"):
        raise InvalidAddress("the address contains a line break")
    candidate = raw.strip()
    if not candidate or any(c in candidate for c in ',;<>"') or " " in candidate:
        raise InvalidAddress("the address must be one plain email address")
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    local, _, domain = result.normalized.rpartition("@")
    return f"{local}@{domain.lower()}"


def retry_delay(
    attempts: int, base_seconds: float, *, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff after ``attempts`` failed tries, capped, with jitter in
    [50%, 100%] of the step so that many deliveries failing together spread out."""
    exponent = min(max(attempts - 1, 0), 30)
    step = min(base_seconds * 2.0**exponent, MAX_RETRY_DELAY_SECONDS)
    return step * (0.5 + rand() / 2)


class Verdict(StrEnum):
    RETRY = "retry"
    PERMANENT = "permanent"


def judge_smtp_code(code: int | None) -> Verdict:
    """5xx is a permanent refusal; 4xx, no answer at all, or anything odd is worth a retry."""
    if code is not None and 500 <= code <= 599:
        return Verdict.PERMANENT
    return Verdict.RETRY


def after_failure(attempts: int, max_attempts: int, verdict: Verdict) -> FailureReason | None:
    """The reason to give up now, or None to try again later."""
    if verdict is Verdict.PERMANENT:
        return FailureReason.REJECTED
    if attempts >= max_attempts:
        return FailureReason.MAX_ATTEMPTS
    return None


def clip_error(text: str) -> str:
    """An SMTP answer fit for ``last_error``: one line, bounded."""
    return " ".join(text.split())[:MAX_ERROR_LENGTH]


class InvalidContext(ValueError):
    """The mail job lacks what its template needs, or carries an unusable value."""
