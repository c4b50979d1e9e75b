"""Delivery rules: address checks, retry schedule, how an SMTP answer is judged, and the
reasons a delivery fails for good. Pure: no I/O."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

from libs.common.email import InvalidEmail, normalise_email
from libs.common.events import MailRequested

# A mail server may be away for a long while (a provider's outage, a full queue): retries
# back off to at most an hour apart and stop two days after the job was queued.
RETRY_MAX_SECONDS = 3600.0
GIVE_UP_AFTER_SECONDS = 2 * 86_400.0
# A row left in 'sending' longer than this belongs to a worker that died mid-send; it is
# queued again, so a crash can mean a second copy of one email (at-least-once).
STUCK_SENDING_SECONDS = 120
MAX_ERROR_LENGTH = 500


class FailureReason(StrEnum):
    """Machine-readable ``mail.failed`` reasons."""

    INVALID_ADDRESS = "invalid_address"
    INVALID_CONTEXT = "invalid_context"
    REJECTED = "smtp_rejected"
    # Retried until the horizon passed. The wire value predates the horizon (a count of
    # attempts used to decide); it is kept so that consumers matching on it still work.
    RETRIES_EXHAUSTED = "max_attempts"


class RetryReason(StrEnum):
    """Machine-readable ``mail.retrying`` reasons (never the server's free text)."""

    DEFERRED = "smtp_deferred"
    UNREACHABLE = "smtp_unreachable"


class InvalidAddress(ValueError):
    """The recipient can't be used in a To header."""


@dataclass(frozen=True)
class RequestMail:
    """Command: record a mail job and send it (from ``mail.requested``: :meth:`of_job`)."""

    mail_id: uuid.UUID
    template: str
    to: str
    ref_type: str
    ref_id: uuid.UUID
    context: Mapping[str, str]
    correlation_id: str | None = None
    # The email's language (en, de, fr, es); None: the branding's Language.
    locale: str | None = None
    # Opaque: the trace the send continues; None: the one recording the job.
    trace_context: str | None = None

    @classmethod
    def of_job(cls, job: MailRequested, correlation_id: str | None) -> RequestMail:
        """``correlation_id``: the message's, for a job that doesn't carry its own."""
        return cls(
            **job.model_dump(exclude={"correlation_id"}),
            correlation_id=job.correlation_id or correlation_id,
        )


def about(mail: RequestMail | Delivery) -> dict[str, Any]:
    """What every mail.* event says of the email it is about."""
    return {
        "mail_id": mail.mail_id,
        "template": mail.template,
        "ref_type": mail.ref_type,
        "ref_id": mail.ref_id,
    }


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
    queued_at: datetime
    # Opaque: the trace the send continues (libs/common/tracing.py), None when off.
    trace_context: str | None = None
    locale: str | None = None


def normalise_address(raw: str) -> str:
    """One plain address (libs/common/email.py), or InvalidAddress saying why not."""
    try:
        return normalise_email(raw)
    except InvalidEmail as exc:
        raise InvalidAddress(exc.reason) from None


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    max_seconds: float = RETRY_MAX_SECONDS
    give_up_after_seconds: float = GIVE_UP_AFTER_SECONDS

    def give_up_at(self, queued_at: datetime) -> datetime:
        return queued_at + timedelta(seconds=self.give_up_after_seconds)


def retry_delay(
    attempts: int, policy: RetryPolicy, *, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff after ``attempts`` failed tries, capped at ``max_seconds``, with
    full jitter (uniform between the base and the step) so that the many deliveries an
    outage fails together come back spread out, not as one wave."""
    exponent = min(max(attempts - 1, 0), 60)
    step = min(policy.base_seconds * 2.0**exponent, policy.max_seconds)
    floor = min(policy.base_seconds, step)
    return floor + rand() * (step - floor)


def next_attempt_at(
    attempts: int,
    queued_at: datetime,
    now: datetime,
    policy: RetryPolicy,
    *,
    rand: Callable[[], float] = random.random,
) -> datetime:
    """When to try again; never past the horizon, so the last try falls on its end."""
    planned = now + timedelta(seconds=retry_delay(attempts, policy, rand=rand))
    return min(planned, policy.give_up_at(queued_at))


def retry_reason(code: int | None) -> RetryReason:
    return RetryReason.UNREACHABLE if code is None else RetryReason.DEFERRED


class Verdict(StrEnum):
    RETRY = "retry"
    PERMANENT = "permanent"


def judge_smtp_code(code: int | None) -> Verdict:
    """5xx is a permanent refusal; 4xx, no answer at all, or anything odd is worth a retry."""
    if code is not None and 500 <= code <= 599:
        return Verdict.PERMANENT
    return Verdict.RETRY


def after_failure(
    verdict: Verdict, queued_at: datetime, now: datetime, policy: RetryPolicy
) -> FailureReason | None:
    """The reason to give up now, or None to try again later."""
    if verdict is Verdict.PERMANENT:
        return FailureReason.REJECTED
    if now >= policy.give_up_at(queued_at):
        return FailureReason.RETRIES_EXHAUSTED
    return None


def abandoned(
    attempts: int, queued_at: datetime, now: datetime, policy: RetryPolicy, grace_seconds: float
) -> bool:
    """A claimed row tried before and still here well past its horizon was left by
    senders that died with it (a normal last try is due at the horizon's end): it gets
    no further try, or a row that kills its sender would be tried forever."""
    late = now - policy.give_up_at(queued_at)
    return attempts > 1 and late > timedelta(seconds=grace_seconds)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clip_error(text: str, limit: int = MAX_ERROR_LENGTH) -> str:
    """A server's answer fit for ``last_error``, a log line and an event: one line,
    bounded, printable. The text is the server's: PostgreSQL takes no NUL, and bytes that
    aren't UTF-8 (kept by aiosmtplib as lone surrogates) can't be written at all."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return " ".join(_CONTROL.sub(" ", text).split())[:limit]


LINK_HIDDEN = "[link]"
# A query value this long is a secret (a token), not a word a server might say anyway.
_SECRET_VALUE_MIN = 16


def _secrets_of(link: str) -> set[str]:
    """A link, and each secret its query carries, as written and percent-encoded."""
    found = {link}
    found.update(v for _, v in parse_qsl(urlsplit(link).query) if len(v) >= _SECRET_VALUE_MIN)
    return {
        form
        for value in found
        for form in (value, quote(value), quote(value, safe=""), quote_plus(value))
    }


def without_links(text: str, links: Sequence[str]) -> str:
    """A server's answer with the job's links (and the tokens in them) taken out: a filter
    refusing a message may quote the address it refused, and the answer goes into
    ``last_error`` (the Invitations screen), a log line and the public mail.retrying or
    mail.failed. Before clip_error, so no cut leaves part of a token."""
    for secret in sorted(
        {s for link in links if link for s in _secrets_of(link)}, key=len, reverse=True
    ):
        text = text.replace(secret, LINK_HIDDEN)
    return text


class InvalidContext(ValueError):
    """The mail job lacks what its template needs, or carries an unusable value."""
